"""`python -m bench`: run the bench paths one at a time, print a table, write results.json."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from bench import nginxconf
from bench.certs import lazy_certs
from bench.paths import DEFAULT_PATHS, PATHS, BuildContext
from bench.procs import ServerSpec, cpu_plan, start_all, stop_all
from bench.report import machine_info, results_json, table
from bench.rounds import median_result
from bench.runner import BenchOptions, PathResult, measure_path
from bench.tools import H2_TOOLS, REQUIRED, ToolsMissing, ensure_tools
from tests.ports import free_port

BENCH_DIR = Path(__file__).resolve().parent
# Neighbours' CPU (cores) above which a path's fixed-rate figures get a note: the bench's own
# processes leave the rest of the cores idle, so even a few % of foreign CPU lands in the p99.
NEIGHBOUR_NOTE = 0.05


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument(
        "--paths",
        default=",".join(DEFAULT_PATHS),
        help=f"comma-separated subset of: {', '.join(PATHS)}; `h1` and `h2` stand for the "
        "HTTP/1.1 (wrk) or HTTP/2 (h2load) paths of the default list, which has all but "
        "ami-1hop-logged",
    )
    ap.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds per measurement (default 10, --quick 3)",
    )
    ap.add_argument("--quick", action="store_true", help="3 s measurements, 1 s warm-up")
    ap.add_argument(
        "--json",
        type=Path,
        default=BENCH_DIR / "results.json",
        help="where to write results (default bench/results.json)",
    )
    ap.add_argument(
        "--run-dir",
        type=Path,
        default=BENCH_DIR / ".run",
        help="scratch dir for configs, certs and logs (wiped first)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the path list N times, interleaved; report per-figure medians",
    )
    ap.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the load generator and servers to separate CPUs",
    )
    args = ap.parse_args(argv)
    groups = {
        "h1": [name for name in DEFAULT_PATHS if not PATHS[name].h2],
        "h2": [name for name in DEFAULT_PATHS if PATHS[name].h2],
    }
    args.paths = ",".join(
        dict.fromkeys(n for p in args.paths.split(",") for n in groups.get(p, [p]))
    )
    unknown = [p for p in args.paths.split(",") if p not in PATHS]
    if unknown:
        ap.error(f"unknown path(s) {', '.join(unknown)}; choose from {', '.join(PATHS)}")
    return args


def _options(args: argparse.Namespace) -> BenchOptions:
    duration = args.duration if args.duration is not None else (3.0 if args.quick else 10.0)
    short = args.quick or duration < 3
    return BenchOptions(
        duration=duration, warmup=1.0 if short else 2.0, rate_warmup=0.5 if short else 1.0
    )


def main(argv: list[str] | None = None) -> int:
    """Run the bench; returns the process exit code."""
    args = _parse(argv)
    names = args.paths.split(",")
    # h2load is installed (as root) when an HTTP/2 path is asked for; without it, and not
    # root, those paths are skipped with the install command and the others still run.
    h2 = any(PATHS[n].h2 for n in names) and os.geteuid() == 0
    try:
        ensure_tools(REQUIRED + (H2_TOOLS if h2 else ()))
    except ToolsMissing as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    opts = _options(args)
    plan = cpu_plan(enabled=not args.no_pin)
    run_dir = args.run_dir.resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    machine = machine_info(plan, opts, max(1, args.rounds))
    backend_port, h2_backend_port = free_port(), free_port()
    backend_conf = run_dir / "backend.conf"
    backend_conf.write_text(nginxconf.backend_conf(run_dir, backend_port, h2_backend_port))
    backend = ServerSpec(
        "backend", nginxconf.nginx_argv(run_dir, backend_conf), cost=False, ready_port=backend_port
    )
    ctx = BuildContext(run_dir, backend_port, free_port, lazy_certs(run_dir), h2_backend_port)
    rounds: dict[str, list[PathResult]] = {name: [] for name in names}
    running = start_all((backend,), run_dir, plan)
    try:
        for round_no in range(1, max(1, args.rounds) + 1):
            for name in names:
                if round_no > 1 and rounds[name][0].skipped is not None:
                    continue
                print(f"bench: round {round_no}: {name} ...", file=sys.stderr, flush=True)
                rounds[name].append(measure_path(PATHS[name], ctx, opts, plan))
    finally:
        stop_all(running)
    results = {name: median_result(rs) for name, rs in rounds.items()}
    # A busy neighbour shows here: compare with loadavg_at_start before trusting a run.
    machine["loadavg_at_end"] = list(os.getloadavg())
    print(table(results))
    for name, r in results.items():
        achieved = r.fixed_rate.get("achieved_rps")
        if achieved is not None and achieved < 0.9 * opts.rate:
            print(
                f"note: {name} kept up with only {achieved:,.0f} of {opts.rate:g} req/s at the "
                "fixed rate: its latencies are those of an overloaded path"
            )
        if r.neighbour_cpu is not None and r.neighbour_cpu >= NEIGHBOUR_NOTE:
            print(
                f"note: {name}: other processes took {r.neighbour_cpu:.0%} of a core during its "
                "fixed-rate run: its p99 measures them as much as the path"
            )
    doc = results_json(results, machine)
    if doc["ratios"]:
        print("ratios: " + ", ".join(f"{k} = {v:.2f}" for k, v in doc["ratios"].items()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 1 if any(r.error for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

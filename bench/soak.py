"""`python -m bench.soak`: hold a path under steady load for minutes; does sidecar memory grow?

Steady keep-alive traffic at a fixed rate (`bench.loadgen`) plus connection churn
(`bench.churn`: one request per connection, bodies, misses, rejected requests, aborted heads).
Every few seconds the RSS of each sidecar is sampled; after a warm-up the series must stay flat
(`bench.memtrend`), and once the load stops every sidecar must be back to zero client
connections. Writes bench/soak.json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench import nginxconf
from bench.certs import lazy_certs
from bench.churn import Churn
from bench.memtrend import Trend, trend
from bench.paths import PATHS, BuildContext
from bench.procs import (
    CpuPlan,
    Running,
    ServerSpec,
    child_env,
    cpu_plan,
    start_all,
    stop_all,
)
from bench.procstat import rss_mb
from bench.tools import ToolsMissing, ensure_tools

# Ports below the ephemeral range, which wrk's client sockets draw from.
from tests.ports import free_port

BENCH_DIR = Path(__file__).resolve().parent
SOAK_PATHS = ("ami-1hop", "ami-2hop-mtls")
_SETTLE_S = 30.0  # pools close idle connections after 10 s; then inbound counts drop to zero


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    ap.add_argument("--path", default="ami-2hop-mtls", choices=SOAK_PATHS)
    ap.add_argument("--minutes", type=float, default=10.0, help="load duration (default 10)")
    ap.add_argument("--warmup", type=float, default=60.0,
                    help="seconds before the baseline is taken (default 60)")
    ap.add_argument("--rate", type=float, default=1000.0, help="steady requests/s (default 1000)")
    ap.add_argument("--churn", type=int, default=20, help="new connections/s (default 20)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between RSS samples")
    ap.add_argument("--max-growth-mb", type=float, default=2.0,
                    help="allowed RSS growth per sidecar after warm-up (default 2 MiB)")
    ap.add_argument("--json", type=Path, default=BENCH_DIR / "soak.json")
    ap.add_argument("--run-dir", type=Path, default=BENCH_DIR / ".run-soak")
    ap.add_argument("--no-pin", action="store_true")
    args = ap.parse_args(argv)
    if args.warmup >= args.minutes * 60:
        ap.error("--warmup must be shorter than the soak")
    return args


def _sidecars(running: list[Running]) -> list[Running]:
    return [r for r in running if r.spec.ready_path == "/ready"]  # Ami's admin readiness probe


def _stats(admin_port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=2) as resp:
        doc: dict[str, Any] = json.load(resp)
    return doc


async def _sample(sidecars: list[Running], interval: float, start: float,
                  series: dict[str, list[tuple[float, float]]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        now = time.monotonic() - start
        for proc in sidecars:
            mb = rss_mb(proc.pid)
            if mb is not None:
                series[proc.spec.name].append((round(now, 1), round(mb, 2)))
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass


async def _loadgen(port: int, args: argparse.Namespace, plan: CpuPlan) -> dict[str, Any]:
    argv = plan.wrap((sys.executable, "-m", "bench.loadgen", f"--port={port}",
                      f"--rate={args.rate}", "--connections=16",
                      f"--duration={args.minutes * 60}", "--warmup=0"), plan.loadgen)
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=child_env())
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {err.decode(errors='replace').strip()}")
    result: dict[str, Any] = json.loads(out)
    return result


async def _settled(sidecars: list[Running]) -> dict[str, int]:
    """Client connections each sidecar still holds, polled until all are zero or a deadline."""
    deadline = time.monotonic() + _SETTLE_S
    while True:
        left = {p.spec.name: int(_stats(p.spec.ready_port or 0)["connections_active"])
                for p in sidecars}
        if not any(left.values()) or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.5)


async def _soak(running: list[Running], entry_port: int, args: argparse.Namespace,
                plan: CpuPlan) -> dict[str, Any]:
    sidecars = _sidecars(running)
    series: dict[str, list[tuple[float, float]]] = {p.spec.name: [] for p in sidecars}
    stop = asyncio.Event()
    start = time.monotonic()
    sampler = asyncio.create_task(_sample(sidecars, args.interval, start, series, stop))
    churn = Churn(entry_port, "backend", args.churn)
    steady, _ = await asyncio.gather(_loadgen(entry_port, args, plan),
                                     churn.run(args.minutes * 60))
    stop.set()
    await sampler
    dead = [p.spec.name for p in running if not p.alive()]
    if dead:
        raise RuntimeError(f"exited during the soak: {', '.join(dead)}")
    return {"steady": steady, "churn_sent": dict(churn.sent), "churn_failed": dict(churn.failed),
            "series": series, "connections_after": await _settled(sidecars)}


def _verdict(doc: dict[str, Any], trends: dict[str, Trend], max_growth: float) -> list[str]:
    problems = [f"{name}: RSS grew {t.growth_mb:+.2f} MiB after warm-up (limit {max_growth})"
                for name, t in trends.items() if t.growth_mb > max_growth]
    if doc["steady"]["errors"]:
        problems.append(f"steady load: {doc['steady']['errors']} failed requests")
    if doc["churn_failed"]:
        problems.append(f"churn: unexpected outcomes {doc['churn_failed']}")
    problems += [f"{name}: {n} client connections still open after the load"
                 for name, n in doc["connections_after"].items() if n]
    return problems


def main(argv: list[str] | None = None) -> int:
    """Run the soak; returns the process exit code."""
    args = _parse(argv)
    try:
        ensure_tools(("nginx",))
    except ToolsMissing as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    plan = cpu_plan(enabled=not args.no_pin)
    run_dir = args.run_dir.resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    backend_port = free_port()
    backend_conf = run_dir / "backend.conf"
    backend_conf.write_text(nginxconf.backend_conf(run_dir, backend_port))
    backend = ServerSpec("backend", nginxconf.nginx_argv(run_dir, backend_conf), cost=False,
                         ready_port=backend_port)
    ctx = BuildContext(run_dir, backend_port, free_port, lazy_certs(run_dir))
    topology = PATHS[args.path].build(ctx)
    print(f"soak: {args.path} for {args.minutes:g} min at {args.rate:g} rps + "
          f"{args.churn} new connections/s", file=sys.stderr, flush=True)
    running = start_all((backend, *topology.servers), run_dir, plan)
    try:
        doc = asyncio.run(_soak(running, topology.entry_port, args, plan))
    finally:
        stop_all(running)
    trends = {name: trend(points, args.warmup) for name, points in doc["series"].items()}
    doc["path"] = args.path
    doc["trends"] = {name: {"baseline_mb": round(t.baseline_mb, 2), "end_mb": round(t.end_mb, 2),
                            "peak_mb": round(t.peak_mb, 2), "growth_mb": round(t.growth_mb, 2),
                            "slope_mb_per_min": round(t.slope_mb_per_min, 3),
                            "samples": t.samples} for name, t in trends.items()}
    problems = _verdict(doc, trends, args.max_growth_mb)
    doc["problems"] = problems
    for name, t in trends.items():
        print(f"{name:14} RSS {t.baseline_mb:6.1f} -> {t.end_mb:6.1f} MiB "
              f"(growth {t.growth_mb:+.2f}, slope {t.slope_mb_per_min:+.3f} MiB/min, "
              f"peak {t.peak_mb:.1f})")
    steady = doc["steady"]
    print(f"steady: {steady['requests']} requests, {steady['errors']} errors, "
          f"p99 {steady['latency_ms'].get('p99', 0):.2f} ms; churn: "
          f"{sum(doc['churn_sent'].values())} connections, "
          f"{sum(doc['churn_failed'].values())} unexpected")
    print("soak: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

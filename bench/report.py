"""The results table, bench/results.json and the ratios the targets are stated in."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from typing import Any

from bench.procs import CpuPlan
from bench.runner import BenchOptions, PathResult

# ratio name -> (numerator path, denominator path), as in docs/performance.md's targets.
RPS_RATIOS = {
    "one_hop_vs_nginx": ("ami-1hop", "nginx"),
    "two_hop_mtls_vs_nginx": ("ami-2hop-mtls", "nginx-pair-mtls"),
    # HTTP/2 (h2load): against nginx answering h2c itself, the analogue of `direct` ...
    "h2_one_hop_vs_nginx": ("ami-1hop-h2", "nginx-h2c"),
    # ... and against nginx proxying h2 to h2 (grpc_pass), the analogue of one_hop_vs_nginx.
    "h2_one_hop_vs_nginx_proxy": ("ami-1hop-h2", "nginx-h2-proxy"),
    "h2_two_hop_mtls_vs_nginx": ("ami-2hop-h2-mtls", "nginx-pair-h2-mtls"),
}
# The floor each protocol's added p99 is measured against (same load generator).
P99_FLOOR = {"http/1.1": "direct", "h2": "nginx-h2c"}
ADDED_P99_RATIOS = {"two_hop_added_p99_vs_nginx_pair": ("ami-2hop-mtls", "nginx-pair-mtls")}


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=5, check=False)
    except OSError:
        return "absent"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def machine_info(plan: CpuPlan, opts: BenchOptions, rounds: int = 1) -> dict[str, Any]:
    """Where and how the run happened: the figures only compare within one run."""
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": list(os.getloadavg()),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "pinning": {"servers": plan.servers, "loadgen": plan.loadgen},
        "tools": {
            "nginx": _version(["nginx", "-v"]),
            "haproxy": _version(["haproxy", "-v"]),
            "wrk": _version(["wrk", "--version"]),
            "h2load": _version(["h2load", "--version"]),
        },
        "settings": {
            "duration_s": opts.duration,
            "rounds": rounds,
            "wrk": f"-t1 -c{opts.wrk_connections}",
            "fixed_rate": f"{opts.rate:g} rps, {opts.rate_connections} connections, 1 KiB body",
            "h2load": f"-t1 -c{opts.h2_connections} -m{opts.h2_streams}",
            "h2_fixed_rate": (
                f"h2load -c{opts.rate_connections} -m{opts.h2_rate_streams} "
                f"--rps={opts.rate / opts.rate_connections:g} (per connection), latency from the "
                "actual send, 10 ms pacing"
            ),
        },
    }


def added_p99(results: dict[str, PathResult], name: str) -> float | None:
    """p99 at the fixed rate over the floor's p99 (`direct`; `nginx-h2c` for HTTP/2)."""
    path = results.get(name)
    floor = P99_FLOOR.get(path.protocol, "direct") if path is not None else "direct"
    direct = results.get(floor)
    if path is None or direct is None or name == floor:
        return None
    if "p99" not in path.latency_ms or "p99" not in direct.latency_ms:
        return None
    return path.latency_ms["p99"] - direct.latency_ms["p99"]


def ratios(results: dict[str, PathResult]) -> dict[str, float]:
    """The ratios whose paths both have figures."""
    out: dict[str, float] = {}
    for key, (num, den) in RPS_RATIOS.items():
        a, b = results.get(num), results.get(den)
        if a is not None and b is not None and a.rps and b.rps:
            out[key] = a.rps / b.rps
    for key, (num, den) in ADDED_P99_RATIOS.items():
        x, y = added_p99(results, num), added_p99(results, den)
        if x is not None and y:
            out[key] = x / y
    return out


def path_json(result: PathResult) -> dict[str, Any]:
    """One path's entry in results.json."""
    if result.skipped is not None or result.error is not None:
        return {"skipped": result.skipped} if result.skipped else {"error": result.error}
    return {
        "rps": result.rps,
        "latency_ms": result.latency_ms,
        "cpu_s_per_1000": result.cpu_s_per_1000,
        "cpu_s_per_1000_saturated": result.cpu_s_per_1000_saturated,
        "rss_mb": result.rss_mb,
        "wrk_latency_ms": result.wrk_latency_ms,
        "fixed_rate": result.fixed_rate,
        "neighbour_cpu": result.neighbour_cpu,
        "errors": result.errors,
        "rounds": result.rounds,
        **({"per_round": result.spread} if result.rounds > 1 else {}),
        **(
            {"protocol": "h2", "h2load_latency_ms": result.h2load_latency_ms}
            if result.protocol == "h2"
            else {}
        ),
    }


def results_json(results: dict[str, PathResult], machine: dict[str, Any]) -> dict[str, Any]:
    """The whole results.json document."""
    return {
        "machine": machine,
        "paths": {name: path_json(r) for name, r in results.items()},
        "ratios": ratios(results),
    }


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, PathResult]) -> str:
    """A fixed-width text table of every path; skipped/failed paths get a note line."""
    head = (
        "path",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "+p99 ms",
        "CPU s/1k",
        "RSS MB",
        "errors",
    )
    rows: list[tuple[str, ...]] = [head]
    notes: dict[str, str] = {}
    for name, r in results.items():
        if r.skipped is not None or r.error is not None:
            notes[name] = f"skipped: {r.skipped}" if r.skipped else f"error: {r.error}"
            rows.append((name,))
            continue
        lat = r.latency_ms
        rows.append(
            (
                name,
                _fmt(r.rps, ",.0f"),
                _fmt(lat.get("p50"), ".2f"),
                _fmt(lat.get("p90"), ".2f"),
                _fmt(lat.get("p99"), ".2f"),
                _fmt(added_p99(results, name), "+.2f"),
                _fmt(r.cpu_s_per_1000, ".3f"),
                _fmt(r.rss_mb, ".1f"),
                str(r.errors),  # wrk counts a fast 502 as a request: req/s means little if > 0
            )
        )
    widths = [max(len(row[i]) for row in rows if len(row) > i) for i in range(len(head))]
    lines = []
    for row in rows:
        if len(row) == 1:
            lines.append(f"{row[0]:<{widths[0]}}  {notes[row[0]].splitlines()[0][:100]}")
            continue
        cells = (
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append("  ".join(cells))
    return "\n".join(lines)

"""Measuring one bench path: start it, warm up, wrk for throughput, fixed rate for latency."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

from bench.paths import BuildContext, PathDef
from bench.procs import CpuPlan, Running, child_env, start_all, stop_all, wait_http_ok
from bench.procstat import cpu_seconds, peak_rss_mb, serving_pids
from bench.wrk import WrkResult, run_wrk, wrk_argv


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """Load settings, identical for every path of a run."""

    duration: float = 10.0
    warmup: float = 2.0
    wrk_connections: int = 32
    rate: float = 1000.0
    rate_connections: int = 16
    rate_warmup: float = 1.0


@dataclass(frozen=True, slots=True)
class PathResult:
    """One path's figures; `skipped`/`error` explain a path that has none."""

    name: str
    rps: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    wrk_latency_ms: dict[str, float] = field(default_factory=dict)
    cpu_s_per_1000: float | None = None
    cpu_s_per_1000_saturated: float | None = None
    rss_mb: float | None = None
    errors: int = 0
    fixed_rate: dict[str, Any] = field(default_factory=dict)
    rounds: int = 1
    spread: dict[str, list[float]] = field(default_factory=dict)  # per-round rps and p99
    skipped: str | None = None
    error: str | None = None


def _fixed_rate(port: int, opts: BenchOptions, plan: CpuPlan) -> dict[str, Any]:
    argv = (
        sys.executable,
        "-m",
        "bench.loadgen",
        f"--port={port}",
        f"--rate={opts.rate}",
        f"--connections={opts.rate_connections}",
        f"--duration={opts.duration}",
        f"--warmup={opts.rate_warmup}",
    )
    out = subprocess.run(
        plan.wrap(argv, plan.loadgen),
        capture_output=True,
        text=True,
        check=False,
        timeout=opts.duration + opts.rate_warmup + 30,
        env=child_env(),
    )
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()}")
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _per_1000(cpu: float, requests: int) -> float | None:
    return cpu / requests * 1000.0 if requests > 0 else None


def _measure(
    name: str, running: list[Running], entry_port: int, opts: BenchOptions, plan: CpuPlan
) -> PathResult:
    pids = [pid for r in running if r.spec.cost for pid in serving_pids(r.pid)]
    timeout = opts.duration + 30
    run_wrk(plan.wrap(wrk_argv(entry_port, opts.warmup), plan.loadgen), timeout)
    cpu0 = cpu_seconds(pids)
    wrk: WrkResult = run_wrk(
        plan.wrap(
            wrk_argv(entry_port, opts.duration, connections=opts.wrk_connections), plan.loadgen
        ),
        timeout,
    )
    cpu1 = cpu_seconds(pids)
    fixed = _fixed_rate(entry_port, opts, plan)
    cpu2 = cpu_seconds(pids)
    dead = [r.spec.name for r in running if not r.alive()]
    if dead:
        raise RuntimeError(f"exited under load: {', '.join(dead)}")
    return PathResult(
        name=name,
        rps=wrk.rps,
        latency_ms=fixed["latency_ms"],
        wrk_latency_ms=wrk.latency_ms,
        cpu_s_per_1000=_per_1000(cpu2 - cpu1, int(fixed["requests"])) if pids else None,
        cpu_s_per_1000_saturated=_per_1000(cpu1 - cpu0, wrk.requests) if pids else None,
        rss_mb=peak_rss_mb(pids) if pids else None,
        errors=wrk.socket_errors + wrk.non_2xx + int(fixed["errors"]),
        fixed_rate={"requests": fixed["requests"], "achieved_rps": fixed["achieved_rps"]},
    )


def measure_path(path: PathDef, ctx: BuildContext, opts: BenchOptions, plan: CpuPlan) -> PathResult:
    """Run one path end to end; a failure becomes `error`, never an exception."""
    reason = path.unavailable()
    if reason is not None:
        return PathResult(path.name, skipped=reason)
    running: list[Running] = []
    try:
        topology = path.build(ctx)
        running = start_all(topology.servers, ctx.run_dir, plan)
        wait_http_ok(topology.entry_port)  # end to end, through every hop
        return _measure(path.name, running, topology.entry_port, opts, plan)
    except (
        RuntimeError,
        OSError,
        ValueError,
        NotImplementedError,
        subprocess.TimeoutExpired,
    ) as exc:
        logs = ", ".join(str(r.log) for r in running)
        return PathResult(path.name, error=f"{exc}" + (f" (logs: {logs})" if logs else ""))
    finally:
        stop_all(running)

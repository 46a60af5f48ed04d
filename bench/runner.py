"""Measuring one bench path: start it, warm up, wrk for throughput, fixed rate for latency.

HTTP/2 paths do the same steps with h2load (`_measure_h2`).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.h2load import H2loadResult, h2load_argv, read_log, run_h2load
from bench.neighbours import NeighbourMeter, plan_cpus
from bench.paths import BuildContext, PathDef
from bench.procs import CpuPlan, Running, child_env, start_all, stop_all, wait_http_ok
from bench.procstat import cpu_seconds, peak_rss_mb, serving_pids
from bench.stats import summarize
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
    # HTTP/2 paths (h2load): as many requests in flight as wrk's 32, multiplexed.
    h2_connections: int = 4
    h2_streams: int = 8
    # The paced run: `rate` over `rate_connections` connections, each allowed this many streams
    # (so a slow answer never holds the next request back behind a stream limit).
    h2_rate_streams: int = 32


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
    protocol: str = "http/1.1"  # "h2" for the HTTP/2 paths
    h2load_latency_ms: dict[str, float] = field(default_factory=dict)  # min/max/mean/sd
    # Other processes' CPU on the bench's CPUs during the fixed-rate run, in cores (0.25 = a
    # quarter of a core): the part of the p99 that measures the neighbours, not the path.
    neighbour_cpu: float | None = None


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
    meter = NeighbourMeter(plan_cpus(plan.servers, plan.loadgen))
    meter.start()
    fixed = _fixed_rate(entry_port, opts, plan)
    neighbours = meter.stop()
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
        neighbour_cpu=neighbours / (opts.duration + opts.rate_warmup),
    )


def _h2_fixed_rate(
    port: int, opts: BenchOptions, plan: CpuPlan, log: Path
) -> tuple[H2loadResult, dict[str, float]]:
    """h2load --rps: `rate` req/s in all; percentiles from its per-request log.

    One run of warm-up + duration (h2load's own --warm-up-time leaves its requests out of the
    count, while the CPU reading covers them); the log's first `rate_warmup` s are dropped.
    """
    log.unlink(missing_ok=True)  # h2load appends
    argv = h2load_argv(
        port,
        opts.duration + opts.rate_warmup,
        connections=opts.rate_connections,
        streams=opts.h2_rate_streams,
        rps_per_connection=opts.rate / opts.rate_connections,
        log_file=log,
    )
    result = run_h2load(plan.wrap(argv, plan.loadgen), opts.duration + opts.rate_warmup + 30)
    return result, summarize(read_log(log, skip_s=opts.rate_warmup))


def _measure_h2(
    name: str,
    running: list[Running],
    entry_port: int,
    opts: BenchOptions,
    plan: CpuPlan,
    run_dir: Path,
) -> PathResult:
    pids = [pid for r in running if r.spec.cost for pid in serving_pids(r.pid)]
    timeout = opts.duration + opts.warmup + 30

    def load(duration: float) -> H2loadResult:
        argv = h2load_argv(
            entry_port, duration, connections=opts.h2_connections, streams=opts.h2_streams
        )
        return run_h2load(plan.wrap(argv, plan.loadgen), timeout)

    load(opts.warmup)
    cpu0 = cpu_seconds(pids)
    sat = load(opts.duration)
    cpu1 = cpu_seconds(pids)
    meter = NeighbourMeter(plan_cpus(plan.servers, plan.loadgen))
    meter.start()
    fixed, latency = _h2_fixed_rate(entry_port, opts, plan, run_dir / f"{name}.h2load.log")
    neighbours = meter.stop()
    cpu2 = cpu_seconds(pids)
    dead = [r.spec.name for r in running if not r.alive()]
    if dead:
        raise RuntimeError(f"exited under load: {', '.join(dead)}")
    return PathResult(
        name=name,
        rps=sat.rps,
        latency_ms=latency,
        cpu_s_per_1000=_per_1000(cpu2 - cpu1, fixed.requests) if pids else None,
        cpu_s_per_1000_saturated=_per_1000(cpu1 - cpu0, sat.requests) if pids else None,
        rss_mb=peak_rss_mb(pids) if pids else None,
        errors=sat.failed + sat.non_2xx + fixed.failed + fixed.non_2xx,
        fixed_rate={"requests": fixed.requests, "achieved_rps": fixed.rps},
        protocol="h2",
        h2load_latency_ms=sat.latency_ms,
        neighbour_cpu=neighbours / (opts.duration + opts.rate_warmup),
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
        wait_http_ok(topology.entry_port, h2=path.h2)  # end to end, through every hop
        if path.h2:
            return _measure_h2(path.name, running, topology.entry_port, opts, plan, ctx.run_dir)
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

"""`make bench-controlplane`: config propagation from an API write to every sidecar's ACK.

For each size N a fresh ``meshctl serve`` starts on free ports (``--warmup 0``) with a
DestinationPolicy and a Route for ``reviews``; N simulated sidecars (``bench.cpsim``, spread
over worker processes) connect and sync. Each round PUTs the route with a new v1/v2 split (the
v2 weight is the round's *marker*) and measures, from the PUT returning, until the last sim has
ACKed a snapshot carrying that marker (sim-side CLOCK_MONOTONIC, comparable across processes);
``GET /api/v1/sync`` gives the server's own view as a cross-check. Control plane CPU seconds
over the rounds and its RSS (VmHWM peak, VmRSS now) come from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.cpsim import sim_namespace
from bench.procs import (
    CpuPlan,
    Running,
    ServerSpec,
    cpu_plan,
    start,
    stop_all,
    wait_http_ok,
)
from bench.procstat import cpu_seconds, peak_rss_mb
from bench.stats import summarize
from meshctl.client import ControlPlaneClient

# Ports below the ephemeral range, which wrk's client sockets draw from.
from tests.ports import free_port

DEFAULT_JSON = Path(__file__).resolve().parent / "results-controlplane.json"
# (figure, sidecars, limit): the performance doc's targets
TARGETS = (("propagation p99 ms", 100, 200.0), ("propagation p99 ms", 1000, 1000.0),
           ("control plane RSS MB", 1000, 300.0))
SEED = """\
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews, namespace: %s}
spec:
  host: reviews
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
"""


# With --sidecar: each namespace's sidecars know only its own services.
SCOPE = """\
apiVersion: ami.mesh/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: %s}
spec:
  egress: [{hosts: ["./*"]}]
"""


def route_doc(v2_weight: int, namespace: str = "default") -> dict[str, Any]:
    """The reviews Route with ``100 - w`` to v1 and ``w`` to v2 (w is the round's marker)."""
    return {"apiVersion": "ami.mesh/v1alpha1", "kind": "Route",
            "metadata": {"name": "reviews", "namespace": namespace},
            "spec": {"host": "reviews", "rules": [{"backends": [
                {"subset": "v1", "weight": 100 - v2_weight},
                {"subset": "v2", "weight": v2_weight}]}]}}


@dataclass(frozen=True, slots=True)
class SizePlan:
    """One size to measure: sidecars, rounds, and sims per worker process."""

    sidecars: int
    rounds: int
    per_worker: int
    timeout: float = 60.0
    full_parse: bool = False
    namespaces: int = 1  # sims spread over ns-0..ns-K-1 (bench.cpsim.sim_namespace)
    sidecar: bool = False  # a Sidecar `./*` in each namespace
    deltas: bool = True  # the sims take delta pushes (False: as proxies built before them)
    restart: bool = False  # after the rounds, restart the control plane and time the resync

    @property
    def route_namespace(self) -> str:
        """The namespace of the reviews Route the rounds re-weight."""
        return sim_namespace(0, self.namespaces)

    @property
    def endpoints(self) -> int:
        """Endpoints in each sim's snapshot: all, or its namespace's when scoped."""
        return self.sidecars // self.namespaces if self.sidecar else self.sidecars


@dataclass(frozen=True, slots=True)
class RoundResult:
    """One route change: client-side time to the last ACK, and the server's sync answer."""

    propagation_ms: float | None  # None: some sim never ACKed the change
    server_ms: float | None
    acked: int
    phases_ms: dict[str, float] | None = None  # the server's timeline of the write


def _rss_now_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def wait_tcp(port: int, *, alive: Callable[[], bool], deadline_s: float = 30.0,
             clock: Callable[[], float] = time.monotonic) -> None:
    """Wait until 127.0.0.1:port accepts connections; RuntimeError at the deadline or exit."""
    end = clock() + deadline_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if not alive() or clock() >= end:
                raise RuntimeError(f"127.0.0.1:{port} not listening") from None
        time.sleep(0.05)


def _get_json(url: str, timeout: float) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


class Worker:
    """A ``bench.cpsim`` process: one JSON command line in, one JSON reply line out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def spawn(cls, target: str, first: int, count: int, *, ca_file: Path,
                    cpus: str | None, full_parse: bool, namespaces: int = 1,
                    deltas: bool = True) -> Worker:
        argv = [sys.executable, "-m", "bench.cpsim", "--target", target, "--first", str(first),
                "--count", str(count), "--ca-file", str(ca_file),
                "--certs-dir", str(ca_file.parent),  # the CA dir holding the trust bundle
                *(["--full-parse"] if full_parse else []),
                *([] if deltas else ["--no-deltas"]),
                *(["--namespaces", str(namespaces)] if namespaces > 1 else [])]
        if cpus is not None:
            argv = ["taskset", "-c", cpus, *argv]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def ask(self, cmd: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        await self.proc.stdin.drain()
        line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sim worker {self.proc.pid} exited ({self.proc.returncode})")
        reply: dict[str, Any] = json.loads(line)
        return reply

    async def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 10.0)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


class Plane:
    """A ``meshctl serve`` subprocess on free ports, seeded with the reviews policy and route."""

    def __init__(self, run_dir: Path, cpus: str | None, plan: SizePlan | None = None) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        config = run_dir / "mesh"
        config.mkdir(parents=True)
        plan = plan or SizePlan(0, 0, 1)
        self.namespace = plan.route_namespace
        (config / "reviews.yaml").write_text(SEED % self.namespace + "---\n"
                                             + json.dumps(route_doc(0, self.namespace)) + "\n")
        if plan.sidecar:
            (config / "sidecars.yaml").write_text("---\n".join(
                SCOPE % sim_namespace(i * 10, plan.namespaces) for i in range(plan.namespaces)))
        argv = (sys.executable, "-m", "meshctl", "serve", "--config-dir", str(config),
                "--state-dir", str(run_dir / "state"), "--listen", f"127.0.0.1:{self.http_port}",
                "--grpc-listen", f"127.0.0.1:{self.grpc_port}", "--warmup", "0",
                "--certs-dir", str(run_dir / "certs"))
        self.ca_file = run_dir / "certs" / "trust-bundle.pem"
        self.argv, self.cpus = argv, cpus
        self.proc: Running = start(ServerSpec("meshctl-serve", argv), run_dir,
                                   CpuPlan(cpus, None))
        self.run_dir = run_dir
        self.base = f"http://127.0.0.1:{self.http_port}"
        self.client: ControlPlaneClient | None = None

    def wait_ready(self) -> None:
        try:
            wait_http_ok(self.http_port, "/api/v1/proxies", alive=self.proc.alive,
                         host=f"127.0.0.1:{self.http_port}")
            wait_tcp(self.grpc_port, alive=self.proc.alive)  # listens after the CA is loaded
        except RuntimeError as exc:
            raise RuntimeError(f"meshctl serve: {exc}\n{self.proc.log_tail()}") from exc
        token = (self.run_dir / "state" / "token").read_text().strip()
        self.client = ControlPlaneClient(self.base, token)

    def restart(self) -> None:
        """SIGTERM, then the same command on the same ports and state, with the default
        --warmup (15 s) so the registry it saved is restored, as in production."""
        self.proc.stop()
        argv = list(self.argv)
        argv[argv.index("--warmup") + 1] = "15"
        self.proc = start(ServerSpec("meshctl-serve-restarted", tuple(argv)), self.run_dir,
                          CpuPlan(self.cpus, None))
        self.wait_ready()

    def connected(self) -> int:
        """How many proxies are connected (``GET /api/v1/proxies``)."""
        status, body = _get_json(f"{self.base}/api/v1/proxies", 10.0)
        return sum(1 for p in body.get("proxies", []) if p.get("connected")) if status == 200 \
            else 0

    def set_marker(self, marker: int) -> str:
        """PUT the route with v2 weight ``marker``; returns the new resourceVersion."""
        assert self.client is not None
        stored = self.client.update(route_doc(marker, self.namespace))
        return str(stored["metadata"]["resourceVersion"])

    def counters(self) -> dict[str, float]:
        """The reconciler's totals (``ami_controlplane_<name>_total`` of its /metrics)."""
        assert self.client is not None
        with self.client._open("GET", "/metrics") as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("ami_controlplane_pushed_bytes_total{kind="):
                kind = name.split('"')[1]  # pushed_bytes_total{kind="delta"}: pushed_bytes_delta
                name = f"ami_controlplane_pushed_bytes_{kind}_total"
            if name.startswith("ami_controlplane_") and name.endswith("_total"):
                out[name[len("ami_controlplane_"):-len("_total")]] = float(value)
        return out

    def sync(self, revision: str, timeout: float) -> tuple[float | None, dict[str, float]]:
        """The server's wait for ``revision`` (None: not synced) and its phases of the write
        (meshctl.controlplane.timeline: ms from the store write, ``converged`` included)."""
        status, body = _get_json(f"{self.base}/api/v1/sync?storeVersion={revision}"
                                 f"&timeout={timeout:g}", timeout + 5.0)
        if status != 200 or not body.get("synced"):
            return None, {}
        phases = {k: float(v) for k, v in body.get("phases_ms", {}).items()}
        if "converged_ms" in body:
            phases["converged"] = float(body["converged_ms"])
        return float(body["elapsed_ms"]), phases


async def _round(plane: Plane, workers: list[Worker], marker: int, timeout: float
                 ) -> RoundResult:
    revision = await asyncio.to_thread(plane.set_marker, marker)
    t0 = time.monotonic()
    server = asyncio.create_task(asyncio.to_thread(plane.sync, revision, timeout))
    # the sims of the Route's namespace get the marker (in a mesh of several namespaces, the
    # others have a reviews of their own); the server's sync waits for every sim
    replies = await asyncio.gather(*(w.ask({"cmd": "marker", "value": marker,
                                            "namespace": plane.namespace,
                                            "timeout": timeout}) for w in workers))
    server_ms, phases = await server
    acked = sum(int(r["acked"]) for r in replies)
    if any(r["waiting"] for r in replies):
        return RoundResult(None, server_ms, acked, phases)
    last = max(float(r["last_ack"]) for r in replies)
    return RoundResult(round((last - t0) * 1000.0, 2), server_ms, acked, phases)


async def measure(plan: SizePlan, run_dir: Path, pin: bool = True) -> dict[str, Any]:
    """Run one size end to end; the JSON entry for it."""
    cpus = cpu_plan(pin)
    plane = Plane(run_dir, cpus.servers, plan)
    workers: list[Worker] = []
    try:
        await asyncio.to_thread(plane.wait_ready)
        t_start = time.monotonic()
        target = f"127.0.0.1:{plane.grpc_port}"
        for first in range(0, plan.sidecars, plan.per_worker):
            count = min(plan.per_worker, plan.sidecars - first)
            workers.append(await Worker.spawn(target, first, count, ca_file=plane.ca_file,
                                              cpus=cpus.loadgen, full_parse=plan.full_parse,
                                              namespaces=plan.namespaces,
                                              deltas=plan.deltas))
        synced = await asyncio.gather(*(w.ask({"cmd": "synced", "endpoints": plan.endpoints,
                                               "timeout": plan.timeout}) for w in workers))
        waiting = sum(int(r["waiting"]) for r in synced)
        if waiting:
            errors = [e for r in synced for e in r["errors"]]
            raise RuntimeError(f"{waiting} of {plan.sidecars} sims not synced after "
                               f"{plan.timeout:g}s: {errors[:3]}\n{plane.proc.log_tail()}")
        connect_s = time.monotonic() - t_start
        sim_pids = [w.proc.pid for w in workers]
        before = await asyncio.gather(*(w.ask({"cmd": "stats"}) for w in workers))
        totals0 = await asyncio.to_thread(plane.counters)
        cpu0, sim_cpu0 = cpu_seconds([plane.proc.pid]), cpu_seconds(sim_pids)
        rounds = [await _round(plane, workers, marker, plan.timeout)
                  for marker in range(1, plan.rounds + 1)]
        cpu_s = cpu_seconds([plane.proc.pid]) - cpu0
        sim_cpu_s = cpu_seconds(sim_pids) - sim_cpu0
        stats = await asyncio.gather(*(w.ask({"cmd": "stats"}) for w in workers))
        totals = await asyncio.to_thread(plane.counters)
        rss_mb, rss_now_mb = peak_rss_mb([plane.proc.pid]), _rss_now_mb(plane.proc.pid)
        # (after the figures of this process: the restart replaces it)
        restart = await _restart(plane, workers, plan) if plan.restart else None
        # snapshots computed / pushed by the control plane per round (its reconcile counters)
        per_round = {k: round((totals.get(k, 0.0) - totals0.get(k, 0.0)) / plan.rounds, 1)
                     for k in ("passes", "computed", "shared", "pushed", "unchanged",
                               "pushed_deltas", "delta_fallbacks", "pushed_bytes_full",
                               "pushed_bytes_delta")}
        return size_entry(plan, rounds, {
            "rss_mb": round(rss_mb, 1), "rss_now_mb": round(rss_now_mb, 1),
            "cpu_s": round(cpu_s, 2), "cpu_ms_per_round": round(cpu_s * 1000 / plan.rounds, 1),
            "per_round": per_round, "sim_cpu_s": round(sim_cpu_s, 2),
            # of the sims' CPU per round, applying, hash-checking and parsing pushes (the
            # rest is their gRPC reads and ACK writes, and asyncio)
            "sim_answer_ms_per_round": round(
                (sum(float(s["answer_s"]) for s in stats)
                 - sum(float(s["answer_s"]) for s in before)) * 1000 / plan.rounds, 1),
            "connect_s": round(connect_s, 2), "workers": len(workers),
            # what registering the sims pushed (each registration reaches everyone)
            "connect_pushed_mb": round((totals0.get("pushed_bytes_full", 0.0)
                                        + totals0.get("pushed_bytes_delta", 0.0)) / 1e6, 1),
            "deltas": plan.deltas,
            "messages": sum(int(s["messages"]) for s in stats),
            # snapshots pushed during the rounds (a scoped mesh pushes a change to fewer)
            "round_messages": sum(int(s["messages"]) for s in stats)
            - sum(int(s["messages"]) for s in before),
            "snapshot_kb": round(sum(int(s["snapshot_bytes"]) for s in stats)
                                 / plan.sidecars / 1024, 1),
            "namespaces": plan.namespaces, "sidecar": plan.sidecar,
            **({"restart": restart} if restart is not None else {}),
            "errors": [e for s in stats for e in s["errors"]][:5]})
    finally:
        await asyncio.gather(*(w.close() for w in workers))
        stop_all([plane.proc])


async def _restart(plane: Plane, workers: list[Worker], plan: SizePlan) -> dict[str, Any]:
    """Restart the control plane, reconnect every sim (each saying the version it runs) and
    time, from the reconnects, until all are connected and the server says synced; what the
    restarted control plane pushed meanwhile (nothing, when the state file held them all)."""
    await asyncio.to_thread(plane.restart)
    before = await asyncio.gather(*(w.ask({"cmd": "stats"}) for w in workers))
    t0 = time.monotonic()
    await asyncio.gather(*(w.ask({"cmd": "reconnect"}) for w in workers))
    deadline = t0 + plan.timeout
    while (connected := await asyncio.to_thread(plane.connected)) < plan.sidecars:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{connected} of {plan.sidecars} sims reconnected after "
                               f"{plan.timeout:g}s\n{plane.proc.log_tail()}")
        await asyncio.sleep(0.05)
    server_ms, _ = await asyncio.to_thread(plane.sync, "0", plan.timeout)
    resynced_s = time.monotonic() - t0
    after = await asyncio.gather(*(w.ask({"cmd": "stats"}) for w in workers))
    totals = await asyncio.to_thread(plane.counters)
    return {"resynced_s": round(resynced_s, 2), "synced": server_ms is not None,
            "pushed": totals.get("pushed", 0.0),
            "pushed_kb": round((totals.get("pushed_bytes_full", 0.0)
                                + totals.get("pushed_bytes_delta", 0.0)) / 1024, 1),
            "messages": sum(int(s["messages"]) for s in after)
            - sum(int(s["messages"]) for s in before)}


def size_entry(plan: SizePlan, rounds: list[RoundResult], extra: dict[str, Any]
               ) -> dict[str, Any]:
    """The JSON for one size: propagation and server sync percentiles plus costs."""
    prop = [r.propagation_ms for r in rounds if r.propagation_ms is not None]
    server = [r.server_ms for r in rounds if r.server_ms is not None]
    phases = sorted({k for r in rounds for k in r.phases_ms or {}})
    return {"sidecars": plan.sidecars, "rounds": len(rounds), "full_parse": plan.full_parse,
            "complete_rounds": len(prop), "propagation_ms": summarize(prop, (50.0, 99.0)),
            "server_sync_ms": summarize(server, (50.0, 99.0)),
            # the server's timeline of each write (ms from it): pass start, all queued, last
            # written to its stream, last ACK (= converged); p50 and p99 over the rounds
            "phases_ms": {k: summarize([r.phases_ms[k] for r in rounds
                                        if r.phases_ms and k in r.phases_ms], (50.0, 99.0))
                          for k in phases if k != "pushes"},
            "acked_per_round": [r.acked for r in rounds], **extra}


def verdicts(sizes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """PASS/FAIL for each target whose size was measured (FAIL when a round never finished)."""
    by_n = {s["sidecars"]: s for s in sizes}
    out = []
    for figure, n, limit in TARGETS:
        entry = by_n.get(n)
        if entry is None:
            continue
        if figure.startswith("propagation"):
            value = entry["propagation_ms"].get("p99")
            ok = value is not None and entry["complete_rounds"] == entry["rounds"]
        else:
            value, ok = entry["rss_mb"], True
        out.append({"figure": figure, "sidecars": n, "limit": limit, "value": value,
                    "pass": bool(ok and value is not None and value <= limit)})
    return out


def render(sizes: list[dict[str, Any]], targets: list[dict[str, Any]]) -> str:
    """The table printed at the end of a run."""
    lines = [f"{'sidecars':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'sync p50':>9} "
             f"{'sync p99':>9} {'snap KB':>8} {'RSS MB':>7} {'RSS now':>8} {'CPU s':>6} "
             f"{'sim CPU':>8} {'connect s':>9} {'computed':>9} {'pushed':>7} {'deltas':>7} "
             f"{'KB/round':>8}"]
    for s in sizes:
        p, q = s["propagation_ms"], s["server_sync_ms"]
        lines.append(f"{s['sidecars']:>8} {_f(p.get('p50')):>8} {_f(p.get('p99')):>8} "
                     f"{_f(p.get('max')):>8} {_f(q.get('p50')):>9} {_f(q.get('p99')):>9} "
                     f"{s.get('snapshot_kb', 0):>8.1f} {s['rss_mb']:>7.1f} "
                     f"{s['rss_now_mb']:>8.1f} {s['cpu_s']:>6.2f} {s['sim_cpu_s']:>8.2f} "
                     f"{s['connect_s']:>9.1f} {_f(s.get('per_round', {}).get('computed')):>9} "
                     f"{_f(s.get('per_round', {}).get('pushed')):>7} "
                     f"{_f(s.get('per_round', {}).get('pushed_deltas')):>7} "
                     f"{_f(_round_kb(s)):>8}")
    for s in sizes:
        if s.get("phases_ms"):
            # where the time went: the server's phases of each write, p50 (p99) over rounds
            phases = ", ".join(f"{k} {_f(v.get('p50'))} ({_f(v.get('p99'))})"
                               for k, v in _phase_order(s["phases_ms"]))
            lines.append(f"{s['sidecars']:>8} server phases ms from the write, p50 (p99): "
                         f"{phases}; sims' apply+hash+parse {s['sim_answer_ms_per_round']} ms"
                         f" CPU of {s['sim_cpu_s'] * 1000 / s['rounds']:.0f} per round")
    for s in sizes:
        if "restart" in s:
            r = s["restart"]
            lines.append(f"{s['sidecars']:>8} restart: all reconnected and synced in "
                         f"{r['resynced_s']:.2f} s, pushed {r['pushed']:.0f} messages "
                         f"({r['pushed_kb']:.1f} KB)")
    for t in targets:
        lines.append(f"{'PASS' if t['pass'] else 'FAIL'}  {t['figure']} at {t['sidecars']}: "
                     f"{_f(t['value'])} (target <= {t['limit']:g})")
    return "\n".join(lines)


def _phase_order(phases: dict[str, dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
    order = ("pass_started", "queued", "last_written", "last_acked", "converged")
    return [(k, phases[k]) for k in order if k in phases]


def _round_kb(size: dict[str, Any]) -> float | None:
    """ConfigMessage KB the control plane pushed per round (full + delta)."""
    per = size.get("per_round", {})
    if "pushed_bytes_full" not in per:
        return None
    return float(per["pushed_bytes_full"] + per.get("pushed_bytes_delta", 0.0)) / 1024


def _f(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.controlplane", description=__doc__)
    parser.add_argument("--sizes", default="10,100,1000", help="sidecar counts (comma list)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="route changes per size (default 20, 10 from 1000 sidecars)")
    parser.add_argument("--per-worker", type=int, default=500, help="sims per worker process")
    parser.add_argument("--full-parse", action="store_true",
                        help="sims json.loads every whole snapshot (costs them ~2 ms each at "
                             "1000 sidecars; default: decode the routes, count endpoints)")
    parser.add_argument("--namespaces", type=int, default=1,
                        help="spread the sims over K namespaces ns-0.. (default 1: default); "
                             "the rounds re-weight ns-0's reviews Route")
    parser.add_argument("--sidecar", action="store_true",
                        help="apply a Sidecar egress ./* in each namespace (each sidecar knows "
                             "its own namespace only); sizes must be multiples of 10 x K")
    parser.add_argument("--no-deltas", action="store_true",
                        help="the sims do not take delta pushes (as proxies built before them): "
                             "every push is a full snapshot")
    parser.add_argument("--restart", action="store_true",
                        help="after the rounds, restart the control plane (default --warmup) "
                             "and time until every sim has reconnected and is synced, with "
                             "what it pushed meanwhile")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument("--run-dir", type=Path, default=None, help="scratch dir (default: temp)")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the control plane and the sims to separate CPUs")
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every size in turn, each on a fresh control plane."""
    sizes = []
    with tempfile.TemporaryDirectory(prefix="ami-bench-cp-") as tmp:
        root = args.run_dir or Path(tmp)
        for n in (int(x) for x in args.sizes.split(",")):
            rounds = args.rounds or (10 if n >= 1000 else 20)
            if args.sidecar and n % (10 * args.namespaces):
                raise SystemExit(f"--sidecar: size {n} is not a multiple of 10 x "
                                 f"{args.namespaces} (each namespace needs whole runs of ten)")
            plan = SizePlan(n, rounds, args.per_worker, timeout=max(60.0, n * 0.1),
                            full_parse=args.full_parse, namespaces=args.namespaces,
                            sidecar=args.sidecar, deltas=not args.no_deltas,
                            restart=args.restart)
            print(f"-- {n} sidecars, {rounds} rounds, "
                  f"{math.ceil(n / args.per_worker)} sim process(es)", file=sys.stderr)
            sizes.append(await measure(plan, root / f"n{n}", pin=not args.no_pin))
    return {"sizes": sizes, "targets": verdicts(sizes)}


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; exit 1 if a size failed to complete."""
    args = parse_args(argv)
    result = asyncio.run(run(args))
    print(render(result["sizes"], result["targets"]))
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)
    incomplete = any(s["complete_rounds"] < s["rounds"] for s in result["sizes"])
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())

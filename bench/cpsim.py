"""Simulated sidecars for the control-plane bench: light clients of the real config stream.

Each sim opens its own channel (its own TCP connection, like a real sidecar), sends Register
(saying it takes deltas, unless ``--no-deltas``: a proxy built before them), then for every
ConfigMessage checks the version is the sha256 of the bytes (a delta is rebuilt on the bytes it
last ACKed and checked by meshctl.api.delta, as the proxy does; a full snapshot is hashed here),
NACKs it if not, decodes the snapshot's ``routes`` with json (``--full-parse``: the whole
snapshot; never the proxy parser, the sims must stay cheap so 1,000 fit on a core), reads the
reviews route's v2 weight (the *marker* a bench round changes), ACKs it and records when. Its
endpoints are counted when the bench asks (before the rounds), not on every push.
As ``python -m bench.cpsim --target HOST:PORT --first I --count N`` a worker process answers
one JSON line per command line on stdin (see ``_command``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.api.delta import DeltaError, apply_delta
from meshctl.ca import BootstrapTokens

Clock = Callable[[], float]
# svc-N fill the mesh; every tenth pair are reviews v1/v2, the route the bench re-weights.
_KINDS = [("reviews", "v1"), ("reviews", "v2")] + [(f"svc-{i}", "v1") for i in range(8)]
_DECODER = json.JSONDecoder()
_CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1),  # one connection per sim
                    ("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000)]


@dataclass(frozen=True, slots=True)
class SimIdentity:
    """Who simulated sidecar number ``index`` says it is."""

    name: str
    service: str
    version: str
    inbound: str
    namespace: str = "default"


def sim_namespace(index: int, namespaces: int) -> str:
    """`default` in a one-namespace mesh, else `ns-K`: each run of ten sims (one of every
    service) in one namespace, the runs dealt round the namespaces."""
    return "default" if namespaces <= 1 else f"ns-{(index // len(_KINDS)) % namespaces}"


def sim_identity(index: int, base_port: int = 20000, namespaces: int = 1) -> SimIdentity:
    """Distinct name and inbound address; services cycle through reviews v1/v2 and svc-0..7."""
    service, version = _KINDS[index % len(_KINDS)]
    port = base_port + index
    return SimIdentity(f"{service}-{version}-{port}", service, version, f"127.0.0.1:{port}",
                       sim_namespace(index, namespaces))


@dataclass(frozen=True, slots=True)
class SnapshotFacts:
    """What the bench needs from a snapshot: endpoint count and the reviews v2 weight."""

    endpoints: int | None  # None: not counted (the sim counts them when asked)
    marker: int | None


def snapshot_facts(data: bytes) -> SnapshotFacts:
    """Parse the whole snapshot with json.loads; raises ValueError when it is not one.

    At 1,000 sidecars a snapshot is ~110 KB and this takes ~2 ms: 2 s of CPU per change for
    the fleet, more than the control plane's own work, hence ``light_snapshot_facts``.
    """
    snap = json.loads(data)
    if not isinstance(snap, dict):
        raise ValueError("snapshot: expected a JSON object")
    endpoints = sum(len(s.get("endpoints", [])) for s in snap.get("services", {}).values())
    return SnapshotFacts(endpoints, _marker(snap.get("routes", [])))


def light_snapshot_facts(data: bytes, *, count: bool = True) -> SnapshotFacts:
    """Parse only ``routes`` and count endpoint addresses (~35 µs at 1,000 endpoints).

    ``routes`` follows ``services`` (docs/design.md's key order) and a sidecar's own part
    after it has no such key, so it is looked for from the end: from the start, the search
    crossed every endpoint (~45 µs a push at 1,000)."""
    start = data.rfind(b'"routes":')
    if start < 0:
        raise ValueError("snapshot: no routes")
    routes, _ = _DECODER.raw_decode(data[start + len(b'"routes":'):].decode().lstrip())
    return SnapshotFacts(data.count(b'"address":') if count else None, _marker(routes))


def routes_facts(data: bytes) -> SnapshotFacts:
    """``light_snapshot_facts`` without the count (a sim counts its endpoints when asked)."""
    return light_snapshot_facts(data, count=False)


def _marker(routes: Any) -> int | None:
    """The v2 weight in the reviews route's first rule, if any."""
    marker = None
    for route in routes:
        if route.get("host") == "reviews":
            for backend in route["rules"][0].get("backends", []):
                if backend.get("subset") == "v2":
                    marker = int(backend.get("weight", 0))
    return marker


@dataclass(eq=False, slots=True)  # compared by identity: the fleet keeps sims in sets
class SimSidecar:
    """One simulated sidecar's stream and what it received."""

    ident: SimIdentity
    clock: Clock
    on_update: Callable[[SimSidecar], None]
    parse: Callable[[bytes], SnapshotFacts] = routes_facts
    counted: int = -1  # endpoints in the last snapshot ACKed, when counted
    marker_acked: dict[int, float] = field(default_factory=dict)  # first ACK time per marker
    messages: int = 0
    errors: list[str] = field(default_factory=list)
    last_version: str = ""
    last_bytes: int = 0  # size of the last snapshot ACKed
    deltas: bool = True  # says so in Register (False: a proxy built before deltas)
    last_json: bytes = b""  # the last snapshot ACKed: what a delta builds on
    delta_messages: int = 0
    answer_s: float = 0.0  # CPU applying, hash-checking and parsing pushes (not gRPC)

    async def run(self, target: str, ca_pem: bytes | None = None, token: str = "") -> None:
        """Stream (TLS verified with ``ca_pem`` when given; registering with ``token``, the
        service's bootstrap token, as a real sidecar does) until cancelled or the server ends
        it (recorded as an error)."""
        channel = (aio.secure_channel(target, grpc.ssl_channel_credentials(ca_pem),
                                      options=_CHANNEL_OPTIONS) if ca_pem is not None
                   else aio.insecure_channel(target, options=_CHANNEL_OPTIONS))
        async with channel:
            stub = mesh_pb2_grpc.MeshControlStub(channel)  # type: ignore[no-untyped-call]
            call = stub.StreamConfig()
            ident = self.ident
            await call.write(mesh_pb2.ProxyMessage(register=mesh_pb2.Register(
                name=ident.name, service=ident.service, namespace=ident.namespace,
                labels={"version": ident.version},
                inbound=ident.inbound, outbound="127.0.0.1:15001", admin="",
                mode="sidecar", ready=True, token=token, deltas=self.deltas,
                config_version=self.last_version)))  # what it runs, on a reconnect
            try:
                while (msg := await call.read()) is not aio.EOF:
                    started = time.thread_time()
                    answer, facts = self._answer(msg)
                    self.answer_s += time.thread_time() - started
                    await call.write(answer)
                    self._record_ack(facts)
            except aio.AioRpcError as exc:
                self.errors.append(f"stream: {exc.code().name} {exc.details()}")
            else:
                self.errors.append("stream: ended by the server")
            self.on_update(self)

    def _answer(self, msg: mesh_pb2.ConfigMessage
                ) -> tuple[mesh_pb2.ProxyMessage, SnapshotFacts | None]:
        """The ACK (or NACK) to send, and what the snapshot says when it is good."""
        self.messages += 1
        facts: SnapshotFacts | None = None
        error = ""
        data = msg.snapshot_json
        if msg.base_version:
            self.delta_messages += 1
            try:  # checks the result hashes to msg.version, as the proxy's apply does
                data = apply_delta(self.last_version, self.last_json, msg)
            except DeltaError as exc:
                error = str(exc)
        if error:
            pass
        elif not self.deltas and msg.base_version:
            error = "a delta pushed to a sim that did not ask for them"
        elif not msg.base_version and hashlib.sha256(data).hexdigest()[:12] != msg.version:
            # (a delta's was checked by apply_delta: hashing it again doubled the sims' cost)
            error = f"version {msg.version} is not the hash of the snapshot"
        elif msg.version == self.last_version:
            error = f"version {msg.version} pushed twice in a row"
        else:
            try:
                facts = self.parse(data)
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                error = f"snapshot: {exc}"
        if error:
            self.errors.append(error)
            return mesh_pb2.ProxyMessage(nack=mesh_pb2.Nack(
                version=msg.version, nonce=msg.nonce, error=error)), None
        self.last_version, self.last_json = msg.version, data
        self.last_bytes = len(data)
        return mesh_pb2.ProxyMessage(ack=mesh_pb2.Ack(version=msg.version,
                                                      nonce=msg.nonce)), facts

    @property
    def endpoints(self) -> int:
        """Endpoints in the last snapshot ACKed (-1: none yet), counted when first asked: only
        the wait for the sims to sync asks, so a round's pushes do not pay ~30 µs each."""
        if self.counted < 0 and self.last_json:
            self.counted = self.last_json.count(b'"address":')
        return self.counted

    def _record_ack(self, facts: SnapshotFacts | None) -> None:
        if facts is not None:
            self.counted = -1 if facts.endpoints is None else facts.endpoints
            if facts.marker is not None:
                self.marker_acked.setdefault(facts.marker, self.clock())
        self.on_update(self)


class Fleet:
    """Sims ``first .. first+count-1`` in this process, and waits over all of them."""

    def __init__(self, target: str, first: int, count: int, *, ca_pem: bytes | None = None,
                 full_parse: bool = False, clock: Clock = time.monotonic,
                 tokens: BootstrapTokens | None = None, namespaces: int = 1,
                 deltas: bool = True) -> None:
        self.target, self.ca_pem, self.tokens = target, ca_pem, tokens
        self._waits: list[_Wait] = []  # the wait_for calls waiting
        parse = snapshot_facts if full_parse else routes_facts
        self.sims = [SimSidecar(sim_identity(i, namespaces=namespaces), clock,
                                self._on_update, parse, deltas=deltas)
                     for i in range(first, first + count)]
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Open every stream (in the background); after ``stop``, reopen them, each sim
        saying in its Register the config it runs, as a reconnecting proxy does."""
        self._tasks = [asyncio.create_task(s.run(self.target, self.ca_pem, self._token(s)))
                       for s in self.sims]

    def _token(self, sim: SimSidecar) -> str:
        return (self.tokens.token_for(sim.ident.namespace, sim.ident.service) if self.tokens
                else "")

    async def stop(self) -> None:
        """Cancel every stream."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_update(self, sim: SimSidecar) -> None:
        for wait in self._waits:
            wait.moved.add(sim)
            wait.woken.set()

    async def wait_for(self, done: Callable[[SimSidecar], bool], timeout: float,
                       sims: list[SimSidecar] | None = None) -> int:
        """Wait until ``done`` holds for every sim (of ``sims``, default all); returns how many
        still fail at the end. An update re-checks only the sim that moved: rescanning every
        sim on every ACK cost the sims' core O(N²) per change (at 500 sims per process, most
        of their CPU), which the bench then measured instead of the control plane."""
        deadline = asyncio.get_running_loop().time() + timeout
        wait = _Wait()
        self._waits.append(wait)
        try:
            pending = {s for s in (self.sims if sims is None else sims) if not done(s)}
            while pending:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return len(pending)
                try:
                    await asyncio.wait_for(wait.woken.wait(), remaining)
                except TimeoutError:
                    pass
                wait.woken.clear()
                moved, wait.moved = wait.moved, set()
                pending -= {s for s in moved & pending if done(s)}
            return 0
        finally:
            self._waits.remove(wait)

    def errors(self) -> list[str]:
        """Every protocol error any sim saw (bad version, stream ended...), named by sim."""
        return [f"{s.ident.name}: {e}" for s in self.sims for e in s.errors]


@dataclass(eq=False, slots=True)
class _Wait:
    """One Fleet.wait_for call: the sims that moved since it last looked."""

    moved: set[SimSidecar] = field(default_factory=set)
    woken: asyncio.Event = field(default_factory=asyncio.Event)


async def _command(fleet: Fleet, cmd: dict[str, Any]) -> dict[str, Any]:
    """``synced``: every sim ACKed a snapshot with ``endpoints`` endpoints; ``marker``: every
    sim (of ``namespace``, when given: the Route's, whose reviews it re-weights) ACKed one with
    that reviews v2 weight (reply: last ACK time, CLOCK_MONOTONIC)."""
    timeout = float(cmd.get("timeout", 30.0))
    if cmd["cmd"] == "synced":
        want = int(cmd["endpoints"])
        waiting = await fleet.wait_for(lambda s: s.endpoints == want, timeout)
        return {"waiting": waiting, "errors": fleet.errors()[:5]}
    if cmd["cmd"] == "marker":
        marker = int(cmd["value"])
        namespace = cmd.get("namespace")
        sims = [s for s in fleet.sims if namespace is None or s.ident.namespace == namespace]
        waiting = await fleet.wait_for(lambda s: marker in s.marker_acked, timeout, sims)
        times = [s.marker_acked[marker] for s in sims if marker in s.marker_acked]
        return {"waiting": waiting, "acked": len(times), "last_ack": max(times, default=None),
                "first_ack": min(times, default=None), "errors": fleet.errors()[:5]}
    if cmd["cmd"] == "reconnect":  # after a control-plane restart: new streams for all
        await fleet.stop()
        fleet.start()
        return {"reconnecting": len(fleet.sims)}
    if cmd["cmd"] == "stats":
        return {"messages": sum(s.messages for s in fleet.sims), "errors": fleet.errors()[:5],
                "delta_messages": sum(s.delta_messages for s in fleet.sims),
                "snapshot_bytes": sum(s.last_bytes for s in fleet.sims),
                "answer_s": sum(s.answer_s for s in fleet.sims),
                "error_count": len(fleet.errors())}
    return {"error": f"unknown command {cmd['cmd']!r}"}


async def _worker(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    ca_pem = args.ca_file.read_bytes() if args.ca_file else None
    tokens = BootstrapTokens.load(args.certs_dir) if args.certs_dir else None
    fleet = Fleet(args.target, args.first, args.count, ca_pem=ca_pem,
                  full_parse=args.full_parse, tokens=tokens, namespaces=args.namespaces,
                  deltas=not args.no_deltas)
    fleet.start()
    try:
        while line := await reader.readline():
            reply = await _command(fleet, json.loads(line))
            sys.stdout.write(json.dumps(reply) + "\n")
            sys.stdout.flush()
    finally:
        await fleet.stop()


def main(argv: list[str] | None = None) -> int:
    """Worker entry point: run ``--count`` sims until stdin closes."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpsim")
    parser.add_argument("--target", required=True, help="config gRPC HOST:PORT")
    parser.add_argument("--first", type=int, default=0, help="index of the first sim")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--ca-file", type=Path, help="trust bundle: connect with TLS")
    parser.add_argument("--certs-dir", type=Path,
                        help="the mesh CA directory: register with each service's bootstrap "
                             "token, derived from its secret")
    parser.add_argument("--full-parse", action="store_true",
                        help="json.loads every whole snapshot (default: routes only)")
    parser.add_argument("--namespaces", type=int, default=1,
                        help="spread the sims over ns-0..ns-K-1 (default 1: all in default)")
    parser.add_argument("--no-deltas", action="store_true",
                        help="do not say so in Register: get full snapshots only")
    args = parser.parse_args(argv)
    asyncio.run(_worker(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

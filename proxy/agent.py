"""Control-plane mode: register with ``meshctl serve``, apply pushed snapshots, ACK or NACK them.

One gRPC stream at a time. The agent registers (name, service, labels, addresses, readiness,
the config version it already runs so a restarted control plane need not re-push it, and its
own Ami version for `meshctl proxy-status` and `meshctl version`),
then applies every ConfigMessage: ``node`` and ``app`` are filled in locally from the command
line, ``server.apply`` compiles it, and the agent answers ACK, or NACK with the error text
(the proxy keeps its last good snapshot). It says it takes deltas: a message with
``base_version`` is rebuilt from the bytes of the snapshot it runs (meshctl.api.delta) and
NACKed when that base is not the one it runs or the result does not hash to the version; the
control plane then sends the snapshot in full. If the stream fails the proxy keeps serving what it
has and reconnects with full-jitter exponential backoff (0.1 s up to 5 s), forever.

Readiness changes are reported with Status: after every applied snapshot (the server re-applies
once its listeners are bound), when a drain starts (SIGTERM, /shutdown), when the app's probe
changes state (``app_health``, proxy/appprobe.py), and on a half-second check. A stopping
proxy ends its stream cleanly (half-close after the queued messages) and waits up to 2 s for
the control plane to close it, so its "not ready" arrives before the stream ends and the
control plane drops the endpoint at once rather than after its --grace.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc import aio

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.api.build import BUILD, VERSION
from meshctl.api.delta import apply_delta
from proxy.config import Snapshot
from proxy.policy.backoff import Backoff
from proxy.server import ProxyServer

log = logging.getLogger("ami.proxy.agent")
_READINESS_CHECK = 0.5
_GOODBYE = 2.0  # seconds a stopping proxy waits for the control plane to end its stream


def parse_labels(text: str) -> dict[str, str]:
    """``version=v1,team=a`` -> {"version": "v1", "team": "a"}."""
    labels: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--labels: {item!r} is not KEY=VALUE")
        labels[key.strip()] = value.strip()
    return labels


def _advertised(address: str | None, host_override: str | None = None) -> str:
    """An address others can reach: --advertise, else the listener's host, where a wildcard
    becomes this machine's name."""
    if not address:
        return ""
    host, _, port = address.rpartition(":")
    if host_override:
        host = host_override
    elif host.strip("[]") in ("", "0.0.0.0", "::"):
        host = socket.gethostname()
    return f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class AgentIdentity:
    """Who this proxy is, from its command line."""

    name: str
    service: str
    namespace: str = "default"
    labels: dict[str, str] = field(default_factory=dict)
    inbound: str = ""
    outbound: str = ""
    admin: str = ""
    mode: str = "sidecar"
    app: str | None = None
    app_protocol: str = ""  # --app-protocol as proxy-status shows it ("" for a gateway)
    token: str = ""
    locality: str = ""  # --locality: region[/zone[/subzone]], checked by __main__

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> AgentIdentity:
        if not args.service:
            raise ValueError("--service is required with --control-plane")
        labels = parse_labels(args.labels)
        port = next((a.rpartition(":")[2] for a in (args.inbound, args.gateway_listen,
                                                    args.admin) if a), "0")
        name = args.name or f"{args.service}-{labels.get('version', 'unknown')}-{port}"
        token = args.token_file.read_text().strip() if args.token_file else ""
        advertise = getattr(args, "advertise", None)
        return cls(name=name, service=args.service, namespace=args.namespace, labels=labels,
                   inbound=_advertised(args.inbound, advertise), outbound=args.outbound or "",
                   admin=_advertised(args.admin or "127.0.0.1:15000", advertise),
                   mode=args.mode, app=args.app,
                   app_protocol="" if args.mode == "gateway"
                   else getattr(args, "app_protocol", None) or "auto",
                   token=token, locality=getattr(args, "locality", None) or "")

    @property
    def app_port(self) -> int:
        """--app's port (checked by __main__), 0 without one: the workload's port."""
        port = (self.app or "").rpartition(":")[2]
        return int(port) if port.isdigit() else 0

    def node(self) -> dict[str, Any]:
        node: dict[str, Any] = {"service": self.service, "namespace": self.namespace,
                                "labels": self.labels}
        if self.locality:
            node["locality"] = self.locality
        return node


class ControlPlaneAgent:
    """Keeps ``server`` configured from the control plane; see the module docstring."""

    def __init__(self, server: ProxyServer, args: argparse.Namespace, *,
                 rng: random.Random | None = None, first_config_timeout: float = 10.0) -> None:
        self.server = server
        self.target: str = args.control_plane
        self.identity = AgentIdentity.from_args(args)
        self.backoff = Backoff(0.1, 5.0, rng or random.Random())
        self.first_config_timeout = first_config_timeout
        ca_file = getattr(args, "ca_file", None)
        self.ca_pem: bytes | None = ca_file.read_bytes() if ca_file else None
        self.cert_expiry: Callable[[], str] = lambda: ""  # set by run.py's identity agent
        self.cert_issued: Callable[[], str] = lambda: ""
        self.gateway_cert: Callable[[], bool] = lambda: False  # its cert has the marker
        self.app_health: Callable[[], str] = lambda: ""  # set by run.py when it probes the app
        self.admin_token = ""  # sent in Register; the admin listener wants it from remote callers
        self.applied_version = ""
        self._applied_json = b""  # the bytes of applied_version: what a delta builds on
        self.connected = asyncio.Event()
        self._outbox: asyncio.Queue[mesh_pb2.ProxyMessage | None] | None = None
        self._reported: tuple[bool, str] | None = None  # (ready, app_health) last sent
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._stream_ended: asyncio.Event | None = None
        server.on_snapshot.append(lambda _snapshot: self._report_readiness())
        server.on_drain.append(self._report_readiness)

    async def start(self) -> None:
        """Connect in the background; return once the first snapshot is applied (or timeout)."""
        self._task = asyncio.create_task(self.run(), name="control-plane-agent")
        try:
            await asyncio.wait_for(self.server.config_applied.wait(), self.first_config_timeout)
        except TimeoutError:
            log.warning("no config from %s after %.0fs: starting unready, still trying",
                        self.target, self.first_config_timeout)

    async def run(self) -> None:
        """Stream, reconnect with backoff, until the server stops."""
        stopped = asyncio.create_task(self.server.stopped.wait())
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._readiness_loop())
                connector = tg.create_task(self._connect_forever())
                await stopped
                await self._goodbye()
                connector.cancel()
                raise _Stop
        except* _Stop:
            pass

    async def finish(self, timeout: float = _GOODBYE + 1.0) -> None:
        """Wait (bounded) for the agent to say goodbye once the server has stopped."""
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), timeout)
            except TimeoutError:
                self._task.cancel()

    async def _goodbye(self) -> None:
        """End the stream cleanly, after what is queued (the drain's "not ready" Status), so
        the control plane drops this endpoint at once instead of after its --grace."""
        self._stopping = True
        outbox, ended = self._outbox, self._stream_ended
        if outbox is None or ended is None:
            return
        self._report_readiness()
        outbox.put_nowait(None)  # _drain ends the request stream (half-close)
        try:
            await asyncio.wait_for(ended.wait(), _GOODBYE)
        except TimeoutError:
            pass

    async def _connect_forever(self) -> None:
        attempt = 0
        options = [("grpc.keepalive_time_ms", 10_000), ("grpc.keepalive_timeout_ms", 5_000),
                   ("grpc.keepalive_permit_without_calls", 1)]
        while not self._stopping:
            # TLS verified with the mesh trust bundle (--ca-file); plaintext only without one.
            channel = (aio.secure_channel(self.target, grpc.ssl_channel_credentials(
                root_certificates=self.ca_pem), options=options) if self.ca_pem is not None
                else aio.insecure_channel(self.target, options=options))
            async with channel:
                try:
                    if await self._stream(mesh_pb2_grpc.MeshControlStub(channel)):  # type: ignore[no-untyped-call]
                        attempt = 0
                except aio.AioRpcError as exc:
                    log.warning("control plane %s: %s %s", self.target, exc.code().name,
                                exc.details())
            self.connected.clear()
            delay = self.backoff.delay(attempt)
            attempt += 1
            log.info("reconnecting to %s in %.2fs", self.target, delay)
            await asyncio.sleep(delay)

    async def _stream(self, stub: mesh_pb2_grpc.MeshControlStub) -> bool:
        """One stream until it ends; True if it delivered at least one snapshot."""
        outbox: asyncio.Queue[mesh_pb2.ProxyMessage | None] = asyncio.Queue()
        self._reported = (self.server.ready, self.app_health())
        outbox.put_nowait(mesh_pb2.ProxyMessage(register=self._register(*self._reported)))
        self._outbox = outbox
        ended = self._stream_ended = asyncio.Event()
        received = False
        call = stub.StreamConfig(_drain(outbox))
        try:
            async for message in call:
                self.connected.set()
                received = True
                if not self._stopping:
                    outbox.put_nowait(self._apply(message))
        finally:
            self._outbox = None
            ended.set()
            # gRPC's task feeding the stream from _drain outlives a failed call; end it, or it
            # waits on the outbox until collected ("Task was destroyed but it is pending!").
            outbox.put_nowait(None)
            call.cancel()
        log.warning("control plane %s ended the stream", self.target)
        return received

    def _register(self, ready: bool, app_health: str) -> mesh_pb2.Register:
        ident = self.identity
        return mesh_pb2.Register(
            name=ident.name, service=ident.service, namespace=ident.namespace,
            labels=ident.labels, inbound=ident.inbound, outbound=ident.outbound,
            admin=ident.admin, mode=ident.mode, token=ident.token, ready=ready,
            config_version=self.applied_version, cert_expiry=self.cert_expiry(),
            cert_issued=self.cert_issued(), gateway_cert=self.gateway_cert(),
            admin_token=self.admin_token,
            app_health=app_health, app_protocol=self.identity.app_protocol,
            locality=self.identity.locality, proxy_version=VERSION, build=BUILD,
            app_port=self.identity.app_port, deltas=True)

    def _apply(self, message: mesh_pb2.ConfigMessage) -> mesh_pb2.ProxyMessage:
        """Apply one pushed snapshot; the answer to send back (ACK or NACK with the error)."""
        if message.version == self.applied_version:
            return mesh_pb2.ProxyMessage(ack=mesh_pb2.Ack(version=message.version,
                                                          nonce=message.nonce))
        try:
            raw = (apply_delta(self.applied_version, self._applied_json, message)
                   if message.base_version else message.snapshot_json)
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise ValueError("snapshot: expected a JSON object")
            data["version"] = message.version
            node = self.identity.node()
            pushed = data.get("node")
            if isinstance(pushed, dict) and "metricsName" in pushed:
                node["metricsName"] = pushed["metricsName"]  # the control plane's to decide
            data["node"] = node
            if self.identity.app:
                data["app"] = self.identity.app
            self.server.apply(Snapshot.from_dict(data))
        except Exception as exc:  # any refusal becomes the NACK text; the old snapshot stays
            log.warning("rejected config %s: %s", message.version, exc)
            return mesh_pb2.ProxyMessage(nack=mesh_pb2.Nack(
                version=message.version, nonce=message.nonce, error=str(exc) or repr(exc)))
        self.applied_version, self._applied_json = message.version, raw
        log.info("applied config %s%s", message.version,
                 f" (delta from {message.base_version})" if message.base_version else "")
        return mesh_pb2.ProxyMessage(ack=mesh_pb2.Ack(version=message.version,
                                                      nonce=message.nonce))

    def _report_readiness(self, force: bool = False) -> None:
        state = (self.server.ready, self.app_health())
        if self._outbox is not None and (force or state != self._reported):
            self._reported = state
            self._outbox.put_nowait(mesh_pb2.ProxyMessage(status=mesh_pb2.Status(
                ready=state[0], cert_expiry=self.cert_expiry(), cert_issued=self.cert_issued(),
                gateway_cert=self.gateway_cert(),
                app_health=state[1])))

    def app_health_changed(self, _state: str) -> None:
        """The app probe flipped: tell the control plane now, not at the next check."""
        self._report_readiness()

    def certificate_changed(self) -> None:
        """Tell the control plane the new expiry (proxy-status, `meshctl check`)."""
        self._report_readiness(force=True)

    async def _readiness_loop(self) -> None:
        while True:
            await asyncio.sleep(_READINESS_CHECK)
            self._report_readiness()


class _Stop(Exception):
    """Ends the agent's task group when the server stops."""


async def _drain(outbox: asyncio.Queue[mesh_pb2.ProxyMessage | None]) -> AsyncIterator[
        mesh_pb2.ProxyMessage]:
    while (message := await outbox.get()) is not None:
        yield message

"""The gRPC config server (``ami.mesh.v1.MeshControl``): one stream per proxy.

Per stream: the first message must be a valid Register (else the stream ends with
INVALID_ARGUMENT naming the missing field); then the reconciler pushes snapshots through a
one-slot mailbox (a newer snapshot replaces one not yet written: each is a full state) while
ACK/NACK/Status messages are read concurrently. When the stream ends the registry starts the
proxy's grace period. ``start_grpc_server`` takes optional TLS server credentials.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
from grpc import aio

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.controlplane.ca_service import CertificateService
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import ProxyInfo, Registry

log = logging.getLogger(__name__)


class RegistrationError(ValueError):
    """A Register message the control plane cannot accept."""


def proxy_info(reg: mesh_pb2.Register) -> ProxyInfo:
    """Validate a Register message into a ProxyInfo; raises RegistrationError."""
    for field in ("name", "service"):
        if not getattr(reg, field):
            raise RegistrationError(f"register.{field}: required")
    mode = reg.mode or "sidecar"
    if mode not in ("sidecar", "gateway"):
        raise RegistrationError(f"register.mode: expected sidecar or gateway, got {mode!r}")
    if mode == "sidecar" and not reg.inbound:
        raise RegistrationError("register.inbound: required for a sidecar (HOST:PORT)")
    for field in ("inbound", "outbound", "admin"):
        value = getattr(reg, field)
        host, sep, port = value.rpartition(":")
        if value and not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise RegistrationError(f"register.{field}: expected HOST:PORT, got {value!r}")
    return ProxyInfo(name=reg.name, service=reg.service, namespace=reg.namespace or "default",
                     labels=dict(reg.labels), inbound=reg.inbound, outbound=reg.outbound,
                     admin=reg.admin, mode=mode, ready=reg.ready, cert_expiry=reg.cert_expiry,
                     cert_issued=reg.cert_issued, admin_token=reg.admin_token)


class _Mailbox:
    """Holds the newest snapshot not yet written to the stream."""

    def __init__(self) -> None:
        self.pending: mesh_pb2.ConfigMessage | None = None
        self.ready = asyncio.Event()

    def offer(self, message: mesh_pb2.ConfigMessage) -> None:
        self.pending = message
        self.ready.set()

    async def take(self) -> mesh_pb2.ConfigMessage:
        while self.pending is None:
            self.ready.clear()
            await self.ready.wait()
        message, self.pending = self.pending, None
        return message


class MeshControlService(mesh_pb2_grpc.MeshControlServicer):
    """StreamConfig over the registry and the reconciler; IssueCertificate via the CA service."""

    def __init__(self, registry: Registry, reconciler: Reconciler,
                 ca_service: CertificateService | None = None) -> None:
        self.registry = registry
        self.reconciler = reconciler
        self.ca_service = ca_service

    async def StreamConfig(
        self, request_iterator: AsyncIterator[mesh_pb2.ProxyMessage],
        context: aio.ServicerContext[mesh_pb2.ProxyMessage, mesh_pb2.ConfigMessage],
    ) -> None:
        first = await context.read()
        if first is aio.EOF or first.WhichOneof("kind") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message on a stream must be Register")
        try:
            info = proxy_info(first.register)
        except RegistrationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        mailbox = _Mailbox()
        session = self.registry.register(info)
        self.reconciler.attach(info.name, mailbox.offer, first.register.config_version)
        log.info("proxy %s (%s) connected from %s", info.name, info.service, context.peer())
        reader = asyncio.create_task(self._read(info.name, session, context))
        try:
            while not reader.done():
                take = asyncio.ensure_future(mailbox.take())
                await asyncio.wait({take, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not take.done():
                    take.cancel()
                    break
                await context.write(take.result())
        finally:
            reader.cancel()
            self.reconciler.detach(info.name, mailbox.offer)
            self.registry.disconnect(info.name, session)
            log.info("proxy %s disconnected", info.name)

    async def _read(self, name: str, session: int,
                    context: aio.ServicerContext[mesh_pb2.ProxyMessage,
                                                 mesh_pb2.ConfigMessage]) -> None:
        while (message := await context.read()) is not aio.EOF:
            kind = message.WhichOneof("kind")
            if kind == "ack":
                self.reconciler.ack(name, message.ack.version, message.ack.nonce)
            elif kind == "nack":
                n = message.nack
                self.reconciler.nack(name, n.version, n.nonce, n.error)
            elif kind == "status":
                self.registry.report(name, session, ready=message.status.ready,
                                     cert_expiry=message.status.cert_expiry,
                                     cert_issued=message.status.cert_issued)
            # a second Register is ignored: a proxy's identity is fixed for its stream

    async def IssueCertificate(
        self, request: mesh_pb2.CertificateRequest,
        context: aio.ServicerContext[mesh_pb2.CertificateRequest, mesh_pb2.CertificateResponse],
    ) -> mesh_pb2.CertificateResponse:
        if self.ca_service is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED,
                                "certificate issuance is not enabled")
            raise AssertionError("unreachable")
        return await self.ca_service.handle(request, context)


async def start_grpc_server(
    service: mesh_pb2_grpc.MeshControlServicer, listen: str,
    credentials: grpc.ServerCredentials | None = None,
) -> tuple[aio.Server, int]:
    """Start the gRPC server on ``listen`` (HOST:PORT, port 0 = any); returns it and its port."""
    server = aio.server(options=[("grpc.keepalive_time_ms", 10_000),
                                 ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                                 ("grpc.keepalive_permit_without_calls", 1)])
    mesh_pb2_grpc.add_MeshControlServicer_to_server(service, server)  # type: ignore[no-untyped-call]
    port = (server.add_secure_port(listen, credentials) if credentials is not None
            else server.add_insecure_port(listen))
    if port == 0:
        raise OSError(f"cannot listen on {listen} (gRPC)")
    await server.start()
    return server, port

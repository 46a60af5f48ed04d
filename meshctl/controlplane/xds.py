"""The gRPC config server (``ami.mesh.v1.MeshControl``): one stream per proxy.

Per stream: the first message must be a valid Register, sent within REGISTER_DEADLINE (else
the stream ends with INVALID_ARGUMENT naming the field, or DEADLINE_EXCEEDED), carrying a
bootstrap token of the service it claims (else UNAUTHENTICATED / PERMISSION_DENIED: a snapshot
lists every endpoint, and a registration becomes one); a gateway's gateway token makes it a
trusted gateway. A name already connected from other
addresses is refused (ALREADY_EXISTS); from the same addresses it is that proxy reconnecting,
and its old stream is closed. Then the reconciler pushes snapshots through a
one-slot mailbox (a newer push replaces one not yet written; one is in flight at a time, so a
delta never replaces what it builds on) while
ACK/NACK/Status messages are read concurrently. When the stream ends the registry starts the
proxy's grace period. ``start_grpc_server`` takes optional TLS server credentials.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import grpc
from grpc import aio

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.api.locality import Locality
from meshctl.ca.spiffe import reserved_namespace
from meshctl.ca.tokens import TokenKind
from meshctl.controlplane.ca_service import CertificateService
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import ProxyInfo, Registry

log = logging.getLogger(__name__)
REGISTER_DEADLINE = 10.0  # seconds a new stream has to send its Register
# Bounds on what a proxy may say about itself: every field ends up in snapshots, proxy-status
# and the registry's state file (Kubernetes' limits for names and labels).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_LABEL_KEY = re.compile(r"([A-Za-z0-9.-]{1,253}/)?[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")
# A release or development version (0.1.0, 0.2.0rc1, 0.2.0.dev3+g1a2b3c): it is shown in
# tables and counted per value, so no spaces or control characters.
_PROXY_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}")
_MAX_LABELS = 64
_MAX_FIELD = 512  # addresses, tokens, versions, timestamps
_APP_HEALTH = ("", "serving", "not_serving")


class RegistrationError(ValueError):
    """A Register message the control plane cannot accept."""


def check_proxy(info: ProxyInfo) -> ProxyInfo:
    """``info`` if a Register carrying it would be accepted, else RegistrationError
    (registrystate checks the entries it restores with it too)."""
    for field in ("name", "service"):
        if not getattr(info, field):
            raise RegistrationError(f"register.{field}: required")
    if not _NAME.fullmatch(info.name):
        raise RegistrationError("register.name: letters, digits, '.', '_', '-', at most 253")
    for field in ("service", "namespace"):
        value = getattr(info, field)
        if value and not _DNS_LABEL.fullmatch(value):
            raise RegistrationError(f"register.{field}: not a DNS label: {value[:64]!r}")
    if len(info.labels) > _MAX_LABELS:
        raise RegistrationError(f"register.labels: at most {_MAX_LABELS}")
    for key, value in info.labels.items():
        if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value):
            raise RegistrationError(f"register.labels: {key[:64]!r}={value[:64]!r} is not a "
                                    "valid label (Kubernetes rules: 63 characters, [A-Za-z0-9._-])")
    for field in ("inbound", "outbound", "admin", "mode", "cert_expiry", "admin_token",
                  "cert_issued"):
        if len(getattr(info, field)) > _MAX_FIELD:
            raise RegistrationError(f"register.{field}: longer than {_MAX_FIELD} characters")
    if info.proxy_version and not _PROXY_VERSION.fullmatch(info.proxy_version):
        raise RegistrationError("register.proxy_version: expected a version such as 0.1.0, "
                                f"got {info.proxy_version[:64]!r}")
    if len(info.build) > 128 or not info.build.isprintable():
        raise RegistrationError("register.build: at most 128 printable characters")
    if info.app_protocol not in ("", "auto", "http1", "http2", "tcp"):
        raise RegistrationError("register.app_protocol: expected auto, http1, http2 or tcp, got "
                                f"{info.app_protocol[:64]!r}")
    if info.locality:
        try:
            Locality.parse(info.locality)
        except ValueError as exc:
            raise RegistrationError(f"register.locality: {exc}") from None
    if not 0 <= info.app_port < 65536:
        raise RegistrationError(f"register.app_port: expected a port, got {info.app_port}")
    if info.mode not in ("sidecar", "gateway"):
        raise RegistrationError(f"register.mode: expected sidecar or gateway, got {info.mode!r}")
    if info.app_health not in _APP_HEALTH:
        raise RegistrationError("register.app_health: expected serving, not_serving or empty, "
                                f"got {info.app_health[:64]!r}")
    if info.mode == "sidecar" and not info.inbound:
        raise RegistrationError("register.inbound: required for a sidecar (HOST:PORT)")
    for field in ("inbound", "outbound", "admin"):
        value = getattr(info, field)
        host, sep, port = value.rpartition(":")
        if value and not (sep and host and port.isdigit() and 0 < int(port) < 65536):
            raise RegistrationError(f"register.{field}: expected HOST:PORT, got {value!r}")
    return info


def proxy_info(reg: mesh_pb2.Register) -> ProxyInfo:
    """Validate a Register message into a ProxyInfo; raises RegistrationError."""
    for field in ("token", "config_version"):  # not kept in ProxyInfo: bounded here
        if len(getattr(reg, field)) > _MAX_FIELD:
            raise RegistrationError(f"register.{field}: longer than {_MAX_FIELD} characters")
    return check_proxy(ProxyInfo(
        name=reg.name, service=reg.service, namespace=reg.namespace or "default",
        labels=dict(reg.labels), inbound=reg.inbound, outbound=reg.outbound, admin=reg.admin,
        mode=reg.mode or "sidecar", ready=reg.ready, cert_expiry=reg.cert_expiry,
        cert_issued=reg.cert_issued, gateway_cert=reg.gateway_cert,
        admin_token=reg.admin_token, app_health=reg.app_health,
        app_protocol=reg.app_protocol, locality=reg.locality,
        proxy_version=reg.proxy_version, build=reg.build, app_port=reg.app_port))


class _Mailbox:
    """Holds the newest snapshot not yet written to the stream, until the stream ends."""

    def __init__(self) -> None:
        self.pending: mesh_pb2.ConfigMessage | None = None
        self.closed = False
        self.ready = asyncio.Event()

    def offer(self, message: mesh_pb2.ConfigMessage) -> None:
        self.pending = message
        self.ready.set()

    def close(self, _: object = None) -> None:
        """The stream is ending (its reader finished, or a newer stream replaced it)."""
        self.closed = True
        self.ready.set()

    async def take(self) -> mesh_pb2.ConfigMessage | None:
        """The next message to write; None once closed. (One await per message: waiting on
        the reader and the eviction too, per message, cost more than the write itself.)"""
        while self.pending is None and not self.closed:
            self.ready.clear()
            await self.ready.wait()
        if self.closed:
            return None
        message, self.pending = self.pending, None
        return message


class MeshControlService(mesh_pb2_grpc.MeshControlServicer):
    """StreamConfig over the registry and the reconciler; IssueCertificate via the CA service."""

    def __init__(self, registry: Registry, reconciler: Reconciler,
                 ca_service: CertificateService | None = None, *,
                 token_kind: Callable[[str, str, str], TokenKind | None] | None = None
                 ) -> None:
        """``token_kind(token, namespace, service)`` authenticates each Register (which
        bootstrap token of that service it is, if any); ``meshctl serve`` always passes the
        CA's tokens (None only in protocol unit tests: every proxy accepted, no gateway
        trusted)."""
        self.registry = registry
        self.reconciler = reconciler
        self.ca_service = ca_service
        self.token_kind = token_kind
        self._evict: dict[str, asyncio.Event] = {}  # name -> set to close its current stream

    async def StreamConfig(
        self, request_iterator: AsyncIterator[mesh_pb2.ProxyMessage],
        context: aio.ServicerContext[mesh_pb2.ProxyMessage, mesh_pb2.ConfigMessage],
    ) -> None:
        try:
            first = await asyncio.wait_for(context.read(), REGISTER_DEADLINE)
        except TimeoutError:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no Register within {REGISTER_DEADLINE:.0f}s")
        if first is aio.EOF or first.WhichOneof("kind") != "register":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message on a stream must be Register")
        try:
            info = proxy_info(first.register)
        except RegistrationError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        info = await self._authenticate(first.register, info, context)
        await self._claim_name(info, context)
        evicted = self._evict[info.name] = asyncio.Event()
        mailbox = _Mailbox()
        session = self.registry.register(info)
        self.reconciler.attach(info.name, mailbox.offer, first.register.config_version,
                               deltas=first.register.deltas)
        log.info("proxy %s (%s, Ami %s) connected from %s", info.name, info.service,
                 info.ami_version, context.peer())
        reader = asyncio.create_task(self._read(info.name, session, context))
        replaced = asyncio.create_task(evicted.wait())
        reader.add_done_callback(mailbox.close)
        replaced.add_done_callback(mailbox.close)
        try:
            while (message := await mailbox.take()) is not None:
                await context.write(message)
                self.reconciler.written(info.name, message.nonce)
        finally:
            # Cancelled too when the stream is (client gone): no task left pending.
            for task in (reader, replaced):
                task.cancel()
            if self._evict.get(info.name) is evicted:
                del self._evict[info.name]
                self.reconciler.detach(info.name, mailbox.offer)
            self.registry.disconnect(info.name, session)
            log.info("proxy %s disconnected", info.name)
        if evicted.is_set():
            await context.abort(grpc.StatusCode.ABORTED,
                                "replaced by a newer stream of the same proxy")

    async def _authenticate(self, reg: mesh_pb2.Register, info: ProxyInfo,
                            context: aio.ServicerContext[mesh_pb2.ProxyMessage,
                                                         mesh_pb2.ConfigMessage]) -> ProxyInfo:
        """The Register must carry a bootstrap token of the service it claims; a gateway
        registered with the service's gateway token is a trusted gateway (its XFCC is kept),
        one with the plain service token is not. A sidecar with a gateway token is refused:
        that token is for gateways only, and a sidecar holding it is a mistake to surface.
        The control plane's own namespace (ami-system) is refused whatever the token."""
        reserved = reserved_namespace(info.namespace)
        if reserved is not None:
            log.warning("refused proxy %s from %s: %s", info.name, context.peer(), reserved)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"register.namespace: {reserved}")
        if self.token_kind is None:
            return info
        if not reg.token:
            log.warning("refused proxy %s from %s: no bootstrap token", info.name, context.peer())
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "register.token: required (the service's bootstrap token, "
                                "`meshctl certs token --service NAME`)")
        kind = self.token_kind(reg.token, info.namespace, info.service)
        if kind is None:
            log.warning("refused proxy %s from %s: bad token for %s/%s", info.name,
                        context.peer(), info.namespace, info.service)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"register.token: not valid for {info.namespace}/{info.service}")
        if kind == "gateway" and info.mode != "gateway":
            log.warning("refused proxy %s from %s: a gateway token in %s mode", info.name,
                        context.peer(), info.mode)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"register.token: a gateway token of {info.namespace}/"
                                f"{info.service}, for proxies in --mode gateway only; give a "
                                "sidecar its service token (`meshctl certs token --service "
                                f"{info.service} --namespace {info.namespace}`)")
        if kind == "gateway":
            return replace(info, trusted_gateway=True)
        if info.mode == "gateway":
            log.warning("gateway %s (%s/%s) registered with a service token: its "
                        "x-forwarded-client-cert is not trusted (give it `meshctl certs token "
                        "--gateway`)", info.name, info.namespace, info.service)
        return info

    async def _claim_name(self, info: ProxyInfo,
                          context: aio.ServicerContext[mesh_pb2.ProxyMessage,
                                                       mesh_pb2.ConfigMessage]) -> None:
        """A connected name from other addresses is another proxy: refuse the newcomer (it
        would silently orphan the first). From the same addresses it is the same proxy
        reconnecting before its old stream was noticed dead: close the old stream."""
        current = self.registry.get(info.name)
        if current is None or not self.registry.connected(info.name):
            return
        same = (current.service, current.inbound, current.outbound, current.admin) == (
            info.service, info.inbound, info.outbound, info.admin)
        if not same:
            log.warning("refused proxy %s from %s: the name is in use by %s", info.name,
                        context.peer(), current.inbound or current.admin)
            await context.abort(grpc.StatusCode.ALREADY_EXISTS,
                                f"proxy name {info.name!r} is in use by another proxy "
                                f"({current.inbound or current.admin}); give each a unique "
                                "--name")
        old = self._evict.get(info.name)
        if old is not None:
            old.set()

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
                status = message.status
                if status.app_health not in _APP_HEALTH:
                    log.warning("proxy %s: ignoring a Status with app_health %r", name,
                                status.app_health[:64])
                    continue
                self.registry.report(name, session, ready=status.ready,
                                     cert_expiry=status.cert_expiry,
                                     cert_issued=status.cert_issued,
                                     app_health=status.app_health,
                                     gateway_cert=status.gateway_cert)
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

"""`--tcp-upstream LOCAL=SERVICE[:PORT]`: a local port an app dials to reach a TCP service.

Consul Connect's upstreams: database and cache drivers cannot use an HTTP proxy, so the
sidecar listens on LOCAL (loopback, normally) and sends every connection accepted there to
SERVICE over `ami-tcp` mTLS (proxy.tcpclient). The port, as in `Host` routing, does not choose
the destination (a service has one app port); it documents what the app thinks it dials.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from proxy.config import Address, ConfigError
from proxy.headers import service_from_authority
from proxy.tcpclient import TcpTarget, find_target, open_session
from proxy.tcprelay import AppEnd, TcpSession

if TYPE_CHECKING:
    from proxy.metrics import RequestStats

log = logging.getLogger("ami.proxy.tcp")
LISTENER = "tcp_upstream"  # the `listener` label and access-log field of these connections


@dataclass(frozen=True, slots=True)
class TcpUpstreamSpec:
    """One `--tcp-upstream` flag."""

    listen: Address
    service: str  # as given (`db`, `db:5432`, `db.ns:5432`)

    @classmethod
    def parse(cls, text: str) -> TcpUpstreamSpec:
        local, sep, service = text.partition("=")
        if not sep or not service or not local:
            raise ConfigError(f"--tcp-upstream {text!r}: expected LOCAL_HOST:PORT=SERVICE[:PORT]"
                              ", e.g. 127.0.0.1:15432=postgres:5432")
        address = Address.parse(local, "--tcp-upstream")
        if address.port == 0:
            raise ConfigError(f"--tcp-upstream {text!r}: the local port must be given")
        return cls(address, service)


class TcpUpstreamListener:
    """One bound `--tcp-upstream` port and its open connections."""

    def __init__(self, spec: TcpUpstreamSpec, stats: RequestStats,
                 targets: Callable[[], Mapping[str, TcpTarget]], max_connections: int,
                 source: Callable[[], tuple[str, str]] = lambda: ("unknown", "unknown"),
                 ) -> None:
        self.spec = spec
        self.stats = stats
        self.targets = targets  # the current snapshot's TCP services
        self.source = source  # this proxy's (workload, version), the connections' source
        self.max_connections = max_connections
        self.sessions: set[TcpSession] = set()
        self.server: asyncio.base_events.Server | None = None
        self.access_log: Any = None
        self.access_filter: Any = None  # a Telemetry's filter, while the log is on
        stats.connections_active.setdefault(LISTENER, 0)
        stats.connections_total.setdefault(LISTENER, 0)

    async def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.server = await loop.create_server(
            lambda: _AcceptedApp(self, TcpSession(self.stats, True, LISTENER, loop)),
            self.spec.listen.host, self.spec.listen.port, backlog=1024, reuse_address=True)

    def accepted(self, session: TcpSession) -> None:
        """A connection from the app: counted, then sent on (or refused)."""
        session.authority = self.spec.service
        session.log_out = self.access_log
        session.log_filter = self.access_filter
        if len(self.sessions) >= self.max_connections:
            self.stats.inc("ami_connections_refused", (("listener", LISTENER),))
            session.fail("too_many_connections")
            return
        self.sessions.add(session)
        self.stats.connections_active[LISTENER] += 1
        self.stats.connections_total[LISTENER] += 1
        session.on_end = self._ended
        target = find_target(self.targets(), self.spec.service)
        if target is None:
            log.warning("--tcp-upstream %s: no TCP service %r in the mesh (not declared "
                        "--app-protocol tcp, or no such service)", self.spec.listen,
                        self.spec.service)
            # counted under the name asked for, as an HTTP request for no service is
            workload, version = self.source()
            asked = service_from_authority(self.spec.service)
            session.opened(("source", workload, version, asked, "unknown", "unknown", "unknown"))
            session.fail("no_route")
            return
        asyncio.get_running_loop().create_task(open_session(session, target))

    def _ended(self, session: TcpSession) -> None:
        if session in self.sessions:
            self.sessions.discard(session)
            self.stats.connections_active[LISTENER] -= 1

    def close(self) -> None:
        """Stop accepting (drain); open connections stay until they end or the proxy stops."""
        if self.server is not None:
            self.server.close()

    def close_all(self) -> None:
        for session in list(self.sessions):
            session.close()


class _AcceptedApp(AppEnd):
    """An app's connection to a `--tcp-upstream` port."""

    __slots__ = ("listener",)

    def __init__(self, listener: TcpUpstreamListener, session: TcpSession) -> None:
        super().__init__(session)
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.session.client_address = str(peer[0])
        super().connection_made(transport)
        self.listener.accepted(self.session)

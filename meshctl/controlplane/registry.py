"""The registry: which proxies are connected, and which of them are endpoints that take traffic.

An endpoint exists while its sidecar's stream is alive, the sidecar reports ready and its app
is not reported as not serving (the sidecar probes it: proxy/appprobe.py). When a
stream drops, the proxy stays listed (disconnected) for a short grace period, so a control
plane blip or a quick reconnect does not pull endpoints out of every snapshot; after the grace
it is forgotten. Every change calls ``on_change`` (the reconciler's next pass marks the proxies
it reaches: meshctl.controlplane.reach), unless it touches only fields no snapshot reads
(``SNAPSHOT_UNREAD``: a certificate renewal), and bumps ``revision`` (registrystate saves the
registry so a restarted control plane can ``restore`` it). ``close`` (the control plane is
stopping) keeps every proxy as it is: the streams its own stop ends are not proxies leaving.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace

from meshctl.api.build import UNKNOWN

# ProxyInfo fields no snapshot reads (tests/test_snapshot_reach.py varies every other one): a
# change of only these is saved and shown, but computes nothing and marks no proxy pending.
SNAPSHOT_UNREAD = frozenset({"cert_expiry", "cert_issued", "admin", "outbound", "admin_token",
                             "proxy_version", "build", "gateway_cert"})


@dataclass(frozen=True, slots=True)
class ProxyInfo:
    """What a proxy said about itself when it registered (plus later Status reports)."""

    name: str
    service: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict)
    inbound: str = ""
    outbound: str = ""
    admin: str = ""
    mode: str = "sidecar"
    # A gateway that registered with its service's gateway token: sidecars keep its XFCC
    # (False for sidecars, and for a gateway that registered with the plain service token).
    trusted_gateway: bool = False
    ready: bool = False
    cert_expiry: str = ""  # RFC 3339, "" when no certificate
    cert_issued: str = ""  # RFC 3339 not-before of that certificate
    gateway_cert: bool = False  # that certificate carries the gateway marker (it says so)
    app_health: str = ""  # serving | not_serving; "" when the sidecar does not probe its app
    app_protocol: str = ""  # what its app speaks (auto, http1, http2, tcp); "" for a gateway
    locality: str = ""  # region[/zone[/subzone]] (--locality); "" when not said
    admin_token: str = field(default="", repr=False)  # for its privileged admin routes (tap)
    proxy_version: str = ""  # its Ami version; "" from a proxy built before it sent one
    build: str = ""  # its runtime, e.g. "cpython 3.11.7" (for people)
    app_port: int = 0  # its app's port (portLevelMtls); 0: no app, or an older proxy

    @property
    def version(self) -> str:
        """The workload's version label (a subset), not the proxy's: see ``ami_version``."""
        return self.labels.get("version", "unknown")

    @property
    def ami_version(self) -> str:
        """The Ami version the proxy runs, "unknown" when it did not say."""
        return self.proxy_version or UNKNOWN

    @property
    def is_endpoint(self) -> bool:
        """Whether other proxies may send to it: a ready sidecar with an inbound address, whose
        app is serving (or not probed)."""
        return (self.ready and self.mode == "sidecar" and bool(self.inbound)
                and self.app_health != "not_serving")


SNAPSHOT_READ = tuple(f.name for f in fields(ProxyInfo) if f.name not in SNAPSHOT_UNREAD)


@dataclass(slots=True)
class _Entry:
    info: ProxyInfo
    session: int  # which stream owns the entry: a stale stream's disconnect is ignored
    expires_at: float | None = None  # set while disconnected


class Registry:
    """Connected (and recently disconnected) proxies, keyed by proxy name."""

    def __init__(self, *, grace: float = 2.0, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[], None] | None = None) -> None:
        self.grace = grace
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._sessions = 0
        self.on_change: Callable[[], None] = on_change or (lambda: None)
        self.revision = 0  # bumped on every change of the listed proxies
        self.changed = asyncio.Event()  # set on every change (the state file's writer waits)
        self._wake = asyncio.Event()
        self._closed = False

    # -- reads -------------------------------------------------------------------------------
    def proxies(self) -> list[ProxyInfo]:
        """Every known proxy, sorted by name (disconnected ones until their grace ends)."""
        return [self._entries[name].info for name in sorted(self._entries)]

    def get(self, name: str) -> ProxyInfo | None:
        entry = self._entries.get(name)
        return entry.info if entry else None

    def connected(self, name: str) -> bool:
        entry = self._entries.get(name)
        return entry is not None and entry.expires_at is None

    def endpoints(self) -> list[ProxyInfo]:
        """Proxies that take traffic (in grace after a disconnect too), sorted by name."""
        return [p for p in self.proxies() if p.is_endpoint]

    def gateways(self) -> list[ProxyInfo]:
        """Proxies registered in gateway mode (in grace after a disconnect too), by name."""
        return [p for p in self.proxies() if p.mode == "gateway"]

    def trusted_gateway(self, name: str, namespace: str, service: str) -> bool:
        """Whether ``name`` is a gateway of namespace/service registered with its gateway token
        (connected, or in its grace): the CA marks only such a proxy's certificate."""
        info = self.get(name)
        return (info is not None and info.mode == "gateway" and info.trusted_gateway
                and (info.namespace, info.service) == (namespace, service))

    def idle_sidecars(self) -> list[ProxyInfo]:
        """Sidecars listed but not taking traffic: unready, draining, or their app not serving."""
        return [p for p in self.proxies() if p.mode == "sidecar" and not p.is_endpoint]

    # -- changes -----------------------------------------------------------------------------
    def register(self, info: ProxyInfo) -> int:
        """Add or replace a proxy; returns the session id its stream must use for later calls."""
        self._sessions += 1
        self._entries[info.name] = _Entry(info, self._sessions)
        self._changed()
        return self._sessions

    def restore(self, infos: Iterable[ProxyInfo], hold: float) -> None:
        """Proxies known before a restart: listed, disconnected, for ``hold`` seconds.

        Their endpoints stay in every snapshot meanwhile, so the first sidecars to reconnect
        are not sent configs missing the ones that reconnect later; a sidecar that reconnects
        replaces its entry, one that does not is dropped when ``hold`` ends.
        """
        expires_at = self._clock() + hold
        for info in infos:
            if info.name not in self._entries:
                self._sessions += 1
                self._entries[info.name] = _Entry(info, self._sessions, expires_at)
        self._changed()
        self._wake.set()

    def report(self, name: str, session: int, *, ready: bool, cert_expiry: str,
               cert_issued: str = "", app_health: str = "", gateway_cert: bool = False) -> None:
        """A Status message: readiness, the app's health or the certificate changed."""
        entry = self._entries.get(name)
        if entry is None or entry.session != session:
            return
        updated = replace(entry.info, ready=ready, cert_expiry=cert_expiry,
                          cert_issued=cert_issued, app_health=app_health,
                          gateway_cert=gateway_cert)
        if updated != entry.info:
            # Without this, every certificate report made every proxy STALE in proxy-status
            # until a pass found that it reached nobody.
            read = any(getattr(updated, f) != getattr(entry.info, f) for f in SNAPSHOT_READ)
            entry.info = updated
            self._changed(reaches_snapshots=read)

    def close(self) -> None:
        """The control plane is stopping: from now on a stream's end drops no proxy, so the
        state file's last save lists every proxy that was connected. (With a short --grace a
        proxy expired while the gRPC server ended the streams, and the restarted control
        plane, not knowing it, pushed the first sidecars back configs without it.)"""
        self._closed = True

    def disconnect(self, name: str, session: int) -> None:
        """The stream ended: keep the proxy for ``grace`` seconds, then drop it."""
        entry = self._entries.get(name)
        if self._closed or entry is None or entry.session != session:
            return  # stopping, or a newer stream already took over this name
        entry.expires_at = self._clock() + self.grace
        self._wake.set()

    def expire(self) -> float | None:
        """Drop proxies whose grace is over; returns seconds until the next expiry, if any."""
        now = self._clock()
        gone = [n for n, e in self._entries.items()
                if e.expires_at is not None and e.expires_at <= now]
        for name in gone:
            del self._entries[name]
        if gone:
            self._changed()
        pending = [e.expires_at for e in self._entries.values() if e.expires_at is not None]
        return min(pending) - now if pending else None

    def _changed(self, *, reaches_snapshots: bool = True) -> None:
        self.revision += 1
        self.changed.set()
        if reaches_snapshots:
            self.on_change()

    async def run(self) -> None:
        """Expire disconnected proxies when their grace ends (until cancelled)."""
        while True:
            self._wake.clear()
            delay = self.expire()
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

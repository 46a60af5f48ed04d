"""Endpoint pools shared across snapshots, so a config push never drops a warm connection."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from meshctl.api.policy import ConnectionPool
from proxy.upstream import EndpointPool

_DEFAULT_POOL = ConnectionPool()  # idle/connect timeouts when no connectionPool is declared

if TYPE_CHECKING:
    from meshctl.api.policy import TrafficPolicy
    from proxy.config import Address


class PoolRegistry:
    """One EndpointPool per (address, expected identity); unused pools close when retired."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pools: dict[tuple[str, int, str | None], EndpointPool] = {}
        self._used: set[tuple[str, int, str | None]] = set()
        self.tls: Any = None  # TlsContexts when this proxy has an identity
        self.mtls = False  # whether the current snapshot wants mTLS to mesh endpoints

    def begin(self) -> None:
        """Start building a new snapshot: track which pools it uses."""
        self._used = set()

    def get(self, address: Address, identity: str | None, version: str,
            policy: TrafficPolicy | None = None) -> EndpointPool:
        key = (address.host, address.port, identity)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = EndpointPool(self.loop, address)
        pool.version = version
        pool.identity = identity
        pool.tls = self.tls if (self.tls is not None and identity and self.mtls) else None
        if policy is not None:
            settings = policy.connection_pool or _DEFAULT_POOL
            pool.idle_timeout = settings.idle_timeout
            pool.connect_timeout = settings.connect_timeout
            pool.max_requests_per_connection = settings.max_requests_per_connection
        self._used.add(key)
        return pool

    def retire_unused(self) -> None:
        """After a snapshot swap: close idle connections of endpoints no longer referenced."""
        for key in [k for k in self._pools if k not in self._used]:
            self._pools.pop(key).close_all()

    def sweep(self) -> None:
        now = self.loop.time()
        for pool in self._pools.values():
            pool.sweep(now)

    def close_all(self) -> None:
        for pool in self._pools.values():
            pool.close_all()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._pools.values())

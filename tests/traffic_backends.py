"""Configurable test backends and a static-mode proxy launcher for the traffic-management tests.

A `TrafficBackend` is a raw HTTP/1.1 server on loopback (hosted by `proxyharness.Backends`) that
answers with its version label, can fail its first N requests, always fail, answer slowly or
reset connections, and records every request (method, path, headers, Host) and connection.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.proxyharness import (
    Backends,
    Message,
    ProxyProcess,
    RawBackend,
    free_port,
    metric_value,
    read_request,
)


@dataclass
class TrafficBackend:
    """One endpoint's behaviour (mutable so a test can change it) and what it observed."""

    version: str = "v1"
    status: int = 200  # answer of every request after the first `fail_first` ones
    fail_first: int = 0  # the first N requests get `fail_status`
    fail_status: int = 503
    reset_first: int = 0  # the first N requests get the connection closed without an answer
    delay: float = 0.0  # seconds before answering (the slowness under test)
    # Requests wait for it to be set before being answered: in flight until the test says so
    # (create it in the hub's loop; set it with hub.loop.call_soon_threadsafe(gate.set)).
    gate: asyncio.Event | None = None
    port: int = 0
    requests: list[Message] = field(default_factory=list)
    active: int = 0  # requests being handled now
    max_active: int = 0
    raw: RawBackend | None = None
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self.raw.accepted if self.raw is not None else 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def hosts(self) -> list[str | None]:
        """The Host header of every request received, in order."""
        return [r.header("host") for r in self.requests]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve requests on one connection until the client closes it."""
        self.writers.add(writer)
        try:
            await self._serve(reader, writer)
        finally:
            self.writers.discard(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            req = await read_request(reader)
            if req is None:
                return
            self.requests.append(req)
            seen = len(self.requests)
            if seen <= self.reset_first:
                writer.transport.abort()
                return
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)  # the slowness under test, not a wait
                if self.gate is not None:
                    await self.gate.wait()
            finally:
                self.active -= 1
            status = self.fail_status if seen <= self.reset_first + self.fail_first \
                else self.status
            body = json.dumps({"version": self.version, "path": req.target,
                               "host": req.header("host")}).encode()
            writer.write(b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\n"
                         b"x-version: %s\r\nserver: traffic-backend\r\n"
                         b"content-length: %d\r\n\r\n%s"
                         % (status, self.version.encode(), len(body), body))
            await writer.drain()


def header_values(msg: Message, name: str) -> list[str]:
    """Every value of a header in a recorded request, in order."""
    return [v for k, v in msg.headers if k.lower() == name.lower()]


def method_of(msg: Message) -> str:
    return msg.first.split(" ", 1)[0]


_BACKENDS: dict[int, list[TrafficBackend]] = {}  # backends started per hub, closed with it


def start_backend(hub: Backends, **behaviour: Any) -> TrafficBackend:
    """Start a TrafficBackend on a free loopback port inside the `Backends` event loop."""
    backend = TrafficBackend(**behaviour)

    async def handler(_raw: RawBackend, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        await backend.handle(reader, writer)

    backend.raw = hub.raw(handler)
    _BACKENDS.setdefault(id(hub), []).append(backend)
    backend.port = backend.raw.port
    return backend


def endpoints(*backends: TrafficBackend) -> list[dict[str, Any]]:
    """Snapshot endpoints for backends, labelled with their version."""
    return [{"address": b.address, "labels": {"version": b.version}} for b in backends]


def dead_endpoint(version: str = "v1") -> dict[str, Any]:
    """An endpoint where nothing listens (connect failure)."""
    return {"address": f"127.0.0.1:{free_port()}", "labels": {"version": version}}


class TrafficProxy(ProxyProcess):
    """`python -m proxy --config` running a full hand-written snapshot (services, routes...)."""

    def __init__(self, tmp: Path, services: dict[str, Any], routes: list[dict[str, Any]],
                 **extra: Any) -> None:
        super().__init__(tmp, {})
        self.inbound = free_port()
        listeners = {"outbound": f"127.0.0.1:{self.outbound}",
                     "admin": f"127.0.0.1:{self.admin}"}
        if "app" in extra:
            listeners["inbound"] = f"127.0.0.1:{self.inbound}"
        data = {"version": "traffic-1", "node": {"service": "client", "labels": {"version": "v1"}},
                "listeners": listeners, "mesh": {"accessLog": False},
                "services": services, "routes": routes, **extra}
        self.config.write_text(yaml.safe_dump(data))

    def url(self, path: str, listener: str = "outbound") -> str:
        port = self.inbound if listener == "inbound" else self.outbound
        return f"http://127.0.0.1:{port}{path}"

    async def metric(self, name: str, **labels: str) -> float:
        """Current value of a metric (summed over matching label sets)."""
        return metric_value(await self.metrics(), name, **labels)


@dataclass(frozen=True, slots=True)
class Reply:
    """What a client saw: status, headers, parsed body (if JSON) and elapsed seconds."""

    status: int
    headers: dict[str, str]
    body: dict[str, Any] | str
    elapsed: float

    @property
    def reason(self) -> str | None:
        return self.headers.get("x-ami-reason")

    @property
    def version(self) -> str | None:
        return self.headers.get("x-version")


async def call(session: aiohttp.ClientSession, proxy: TrafficProxy, host: str, path: str = "/",
               *, method: str = "GET", headers: dict[str, str] | None = None,
               data: bytes | None = None, timeout: float = 10.0,
               listener: str = "outbound") -> Reply:
    """One request through the proxy with `Host: host`."""
    start = time.monotonic()
    async with session.request(method, proxy.url(path, listener), data=data,
                               headers={"Host": host, **(headers or {})},
                               timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        text = await resp.text()
        body: dict[str, Any] | str = text
        if resp.headers.get("content-type", "").startswith("application/json"):
            body = json.loads(text)
        return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, body,
                     time.monotonic() - start)


async def call_many(session: aiohttp.ClientSession, proxy: TrafficProxy, host: str, count: int,
                    *, concurrency: int = 16, **kw: Any) -> list[Reply]:
    """`count` requests with at most `concurrency` in flight."""
    gate = asyncio.Semaphore(concurrency)

    async def one() -> Reply:
        async with gate:
            return await call(session, proxy, host, **kw)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def versions(session: aiohttp.ClientSession, proxy: TrafficProxy, host: str, count: int,
                   **kw: Any) -> Counter[str | None]:
    """How many of `count` requests, one after the other, each version answered."""
    return Counter([(await call(session, proxy, host, **kw)).version for _ in range(count)])


def close_backends(hub: Backends, backends: Iterable[TrafficBackend]) -> None:
    """Close the backends' open connections (so no handler is left pending), then the hub."""

    async def close_all() -> None:
        for backend in backends:
            for writer in list(backend.writers):
                writer.close()
        end = time.monotonic() + 1.0
        while any(b.writers for b in backends) and time.monotonic() < end:
            await asyncio.sleep(0.01)  # deadline-bounded wait for the handlers to return

    hub.call(close_all())
    hub.close()


def started(proxy: TrafficProxy, hub: Backends) -> Iterator[TrafficProxy]:
    """Fixture body: start the proxy, yield it, stop it and the backends."""
    try:
        proxy.start()
        yield proxy
    finally:
        proxy.stop()
        close_backends(hub, _BACKENDS.pop(id(hub), []))

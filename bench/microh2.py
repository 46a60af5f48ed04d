"""The HTTP/2 variants of `bench.micro`: the h2 client and upstream protocols, in memory.

A client connection (preface, SETTINGS, h2load's 1 GiB windows) sends batches of GET HEADERS,
`BATCH` streams at a time as `h2load -m8` does; the proxy routes each to a pooled HTTP/2
upstream connection, which is fed the server's HEADERS and a 1 KiB DATA per stream. The loop
runs one turn after each read, so the protocols' per-turn write batching is what it is live.
The frames are built as an HPACK encoder with a dynamic table sends them (the first request
literal, the rest indexed), so the proxy decodes what a real client's bytes would cost.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

from hpack import Encoder

from bench.amiconf import BENCH_SERVICE
from bench.micro import MemoryTransport, Result, _snapshot

BATCH = 8  # streams per client read and per server read (h2load -m8)
_BODY = b"x" * 1024
_WINDOW = 2**30 - 1  # h2load's default -w 30 / -W 30

_DATA, _HEADERS, _SETTINGS, _WINDOW_UPDATE = 0, 1, 4, 8
_END_STREAM, _ACK, _END_HEADERS = 0x1, 0x1, 0x4


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return ((len(payload) << 8 | kind).to_bytes(4, "big") + bytes((flags,))
            + stream_id.to_bytes(4, "big") + payload)


def _blocks(headers: list[tuple[bytes, bytes]]) -> tuple[bytes, bytes]:
    """The first header block an encoder sends for `headers`, then every later one's."""
    enc = Encoder()
    return enc.encode(headers), enc.encode(headers)


REQUEST_HEADERS = [(b":method", b"GET"), (b":scheme", b"http"),
                   (b":path", b"/productpage?u=normal"), (b":authority", BENCH_SERVICE.encode()),
                   (b"accept", b"*/*"), (b"accept-encoding", b"gzip, deflate"),
                   (b"user-agent", b"h2load nghttp2/1.52.0")]
RESPONSE_HEADERS = [(b":status", b"200"), (b"server", b"nginx/1.22.1"),
                    (b"date", b"Fri, 27 Nov 2026 03:00:00 GMT"),
                    (b"content-type", b"text/plain"), (b"content-length", b"1024")]
CLIENT_PREFACE = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
                  + frame(_SETTINGS, 0, 0, (4).to_bytes(2, "big") + _WINDOW.to_bytes(4, "big"))
                  + frame(_WINDOW_UPDATE, 0, 0, (_WINDOW - 65535).to_bytes(4, "big")))
SERVER_PREFACE = frame(_SETTINGS, 0, 0, (3).to_bytes(2, "big") + (128).to_bytes(4, "big"))
SETTINGS_ACK = frame(_SETTINGS, _ACK, 0, b"")


class Peer:
    """One side's frames: request HEADERS (client) or response HEADERS + DATA (server)."""

    def __init__(self, headers: list[tuple[bytes, bytes]], body: bytes | None) -> None:
        self.first, self.block = _blocks(headers)
        self.body = body
        self.next_id = 1

    def batch(self, count: int) -> bytes:
        parts = []
        flags = _END_HEADERS if self.body is not None else _END_HEADERS | _END_STREAM
        for _ in range(count):
            sid = self.next_id
            self.next_id += 2
            block = self.first if sid == 1 else self.block
            parts.append(frame(_HEADERS, flags, sid, block))
            if self.body is not None:
                parts.append(frame(_DATA, _END_STREAM, sid, self.body))
        return b"".join(parts)


async def measure(variant: str, requests: int, repeats: int) -> Result:
    """As bench.micro.measure, over HTTP/2 (requests rounded up to whole batches)."""
    from proxy.config import Snapshot
    from proxy.downstream import DownstreamProtocol
    from proxy.h2upstream import H2UpstreamConnection
    from proxy.server import ProxyOptions, ProxyServer

    base = variant.removeprefix("h2-") if variant != "h2" else "plain"
    server = ProxyServer(ProxyOptions())
    server.apply(Snapshot.from_dict(_snapshot(base)))
    await server.start_listeners()
    listener = server.listeners["inbound" if base == "inbound" else "outbound"]
    (pool,) = list(server.pools)
    pool.declare("http2")
    upstream = H2UpstreamConnection(pool)
    upstream_transport = MemoryTransport()
    upstream.connection_made(upstream_transport)  # type: ignore[arg-type]
    pool.connections += 1
    upstream.data_received(SERVER_PREFACE + SETTINGS_ACK)
    upstream.ready = True
    h1 = DownstreamProtocol(listener)
    client_transport = H2MemoryTransport(h1)
    h1.connection_made(client_transport)  # type: ignore[arg-type]
    client = Peer(REQUEST_HEADERS, None)
    backend = Peer(RESPONSE_HEADERS, _BODY)
    client_transport.protocol.data_received(CLIENT_PREFACE)
    client_transport.protocol.data_received(SETTINGS_ACK)
    batches = max(1, -(-requests // BATCH))

    async def cycle() -> None:
        client_transport.protocol.data_received(client.batch(BATCH))
        await asyncio.sleep(0)  # the upstream's flush: the requests' HEADERS go out
        upstream.data_received(backend.batch(BATCH))
        await asyncio.sleep(0)  # the client side's flush: the answers go out

    await cycle()
    sent = client_transport.written
    await cycle()
    if client_transport.written - sent < BATCH * len(_BODY) or upstream.streams:
        raise RuntimeError(f"{variant}: no answers through the proxy")
    best = float("inf")
    gc.collect()
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            await cycle()
        best = min(best, time.perf_counter() - t0)
    session = client_transport.protocol
    if getattr(session, "closed", True) or getattr(session, "streams", None) or upstream.closed:
        raise RuntimeError(f"{variant}: a connection closed, or streams were left open")
    for lst in server.listeners.values():
        if lst.server is not None:
            lst.server.close()
    return Result(variant, batches * BATCH, best / (batches * BATCH) * 1e6)


class H2MemoryTransport(MemoryTransport):
    """bench.micro's MemoryTransport, plus the protocol switch an h2c preface makes."""

    def __init__(self, protocol: Any) -> None:
        super().__init__()
        self.protocol = protocol

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

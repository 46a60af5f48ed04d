"""HTTP/2 bookkeeping that must empty itself: per-stream state left behind when a stream ends
in an unusual order. The proxy runs in-process so its tables can be read directly."""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import AsyncIterator
from typing import Any

import h2.events as ev
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings

from tests.proxyharness import eventually

DEADLINE = 10.0
Headers = list[tuple[bytes, bytes]]


class RawServer(asyncio.Protocol):
    """An h2c server by path: `/early` is answered in full on its HEADERS (before the request
    ends, and never reset afterwards), `/early-big` too with 60 KB; `/big` gets 60 KB once the
    request ended; else 100 bytes."""

    max_streams = 2

    def __init__(self) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.paths: dict[int, bytes] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: self.max_streams})
        self.h2.initiate_connection()
        self.transport.write(self.h2.data_to_send())

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, ev.RequestReceived):
                path = dict(event.headers)[b":path"]
                self.paths[event.stream_id] = path
                if path == b"/early":
                    self.h2.send_headers(event.stream_id, [(b":status", b"200")],
                                         end_stream=True)
                elif path == b"/early-big":
                    self.h2.send_headers(event.stream_id, [(b":status", b"200")])
                    for _ in range(4):
                        self.h2.send_data(event.stream_id, b"x" * 15000)
                    self.h2.end_stream(event.stream_id)
            elif isinstance(event, ev.DataReceived):
                self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                  event.stream_id)
            elif isinstance(event, ev.StreamEnded):
                path = self.paths.get(event.stream_id)
                if path in (b"/early", b"/early-big"):
                    continue
                self.h2.send_headers(event.stream_id, [(b":status", b"200")])
                for _ in range(4 if path == b"/big" else 1):
                    self.h2.send_data(event.stream_id, b"x" * 15000)
                self.h2.end_stream(event.stream_id)
        assert self.transport is not None
        self.transport.write(self.h2.data_to_send())


class RawClient(asyncio.Protocol):
    """An h2c client whose receive window and reading are under the test's control."""

    def __init__(self, window: int = 65535) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.window = window
        self.reading = True  # give received DATA back as window
        self.status: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self.completed: set[int] = set()  # ended by the proxy's END_STREAM (not a reset)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.h2.local_settings = Settings(client=True, initial_values={
            SettingCodes.INITIAL_WINDOW_SIZE: self.window})
        self.h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, ev.ResponseReceived):
                self.status[event.stream_id] = dict(event.headers)[b":status"]
            elif isinstance(event, ev.DataReceived) and self.reading:
                self.h2.acknowledge_received_data(event.flow_controlled_length,
                                                  event.stream_id)
            elif isinstance(event, ev.StreamEnded | ev.StreamReset):
                self.ended.add(event.stream_id)
                if isinstance(event, ev.StreamEnded):
                    self.completed.add(event.stream_id)
        self.flush()

    def send_head(self, headers: Headers, end: bool = True) -> int:
        """A request head as it is, unchecked by h2 (one the proxy refuses)."""
        sid = self.h2.get_next_available_stream_id()
        config = self.h2.config
        config.validate_outbound_headers = False
        self.h2.send_headers(sid, headers, end_stream=end)
        config.validate_outbound_headers = True
        self.flush()
        return sid

    def request(self, path: str, *, body: bytes = b"", end: bool = True,
                authority: bytes = b"svc") -> int:
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"),
                                   (b":authority", authority), (b":path", path.encode())],
                             end_stream=end and not body)
        if body:
            self.h2.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def reset(self, sid: int) -> None:
        self.h2.reset_stream(sid, ErrorCodes.CANCEL)
        self.ended.add(sid)
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


class Env:
    def __init__(self, server: Any, port: int) -> None:
        self.server = server
        self.port = port

    async def client(self, **kw: Any) -> RawClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(lambda: RawClient(**kw), "127.0.0.1", self.port)
        await eventually(lambda: self.session_count() >= 1, DEADLINE)
        return client

    def sessions(self) -> list[Any]:
        from proxy.h2downstream import H2DownstreamProtocol

        return [c for c in self.server.listeners["outbound"].connections
                if isinstance(c, H2DownstreamProtocol)]

    def session_count(self) -> int:
        return len(self.sessions())


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    from proxy.config import Address, Snapshot
    from proxy.listener import Limits
    from proxy.server import ProxyOptions, ProxyServer

    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(RawServer, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]
    server = ProxyServer(ProxyOptions(listeners={"outbound": Address("127.0.0.1", 0)},
                                      limits=Limits(stream_idle_timeout=5.0)))
    server.apply(Snapshot.from_dict({
        "version": "1", "node": {"service": "client"}, "listeners": {"outbound": "127.0.0.1:0"},
        "services": {"svc": {"endpoints": [{"address": f"127.0.0.1:{port}"}]}}}))
    try:
        await server.start_listeners()
        yield Env(server, server.bound_address("outbound").port)
    finally:
        await server.shutdown(deadline=1.0)
        upstream.close()


async def test_answer_before_the_request_end_frees_the_upstream_stream(env: Env) -> None:
    """A server answering in full before the request's end, without resetting the stream (RFC
    9113 8.1 allows it): the proxy resets its side, so the stream no longer counts against the
    server's SETTINGS_MAX_CONCURRENT_STREAMS (2 here) and later requests still get through."""
    client = await env.client()
    for _ in range(2 * RawServer.max_streams + 1):
        sid = client.request("/early", body=b"part of a body", end=False)
        await eventually(lambda sid=sid: sid in client.ended, DEADLINE)
        assert client.status[sid] == b"200"
    conns = [c for pool in env.server.pools for c in pool.h2]
    assert len(conns) == 1
    await eventually(lambda: conns[0].h2.open_outbound_streams == 0, DEADLINE)


async def test_response_held_for_window_leaves_no_stream_idle_watch(env: Env) -> None:
    """A response the upstream finished while the client's window held part of it back: the
    stream idle sweep watches it meanwhile, and forgets it once the client read it all."""
    client = await env.client(window=1000)
    client.reading = False  # the window stays shut: the answer waits in the proxy
    sid = client.request("/big")
    (session,) = env.sessions()
    await eventually(lambda: sid in session.streams and session.streams[sid].exchange is None,
                     DEADLINE)  # the exchange has finished; its answer is held
    loop = asyncio.get_running_loop()
    session.check_timers(loop.time())
    assert sid in session._watch
    client.reading = True
    client.h2.increment_flow_control_window(1 << 20)
    client.h2.increment_flow_control_window(1 << 20, sid)
    client.flush()
    await eventually(lambda: sid in client.ended, DEADLINE)
    session.check_timers(loop.time())
    assert not session.streams
    assert not session._watch


async def test_early_answer_held_for_window_ends_the_client_stream(env: Env) -> None:
    """An answer complete before the request's end but held for the client's window: once it
    is out, the client is told to stop sending (RST_STREAM NO_ERROR, as for an answer sent at
    once), so the stream does not stay half-open on the client connection."""
    client = await env.client(window=1000)
    client.reading = False
    sid = client.request("/early-big", body=b"part of a body", end=False)
    (session,) = env.sessions()
    await eventually(lambda: sid in session.streams and session.streams[sid].exchange is None,
                     DEADLINE)
    client.reading = True
    client.h2.increment_flow_control_window(1 << 20)
    client.h2.increment_flow_control_window(1 << 20, sid)
    client.flush()
    await eventually(lambda: client.status.get(sid) == b"200" and sid in client.ended, DEADLINE)
    session.check_timers(asyncio.get_running_loop().time())
    assert not session.streams and not session._watch
    await eventually(lambda: session.h2.open_inbound_streams == 0, DEADLINE)


def test_closed_streams_are_remembered_within_a_bound() -> None:
    """h2 remembered the last 65536 closed streams of every connection (~8 MB once a long-lived
    connection carried that many requests); the proxy's connections keep a bounded number, and
    a late frame on a stream closed before those is a stream error, not the connection's end."""
    from hyperframe.frame import HeadersFrame

    from proxy.h2guard import MeshH2Connection

    server = MeshH2Connection(H2Configuration(client_side=False, header_encoding=None))
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    head = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"a"), (b":path", b"/")]
    streams = 3000
    for _ in range(streams):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, head, end_stream=True)
        server.receive_data(client.data_to_send())
        server.send_headers(sid, [(b":status", b"204")], end_stream=True)
        client.receive_data(server.data_to_send())
    assert server.open_inbound_streams == 0  # (h2 moves closed streams to its memory here)
    assert len(server.streams) + len(server._closed_streams) <= streams // 2
    late = HeadersFrame(1)  # trailers on the very first stream, long forgotten
    late.data = client.encoder.encode([(b"x-late", b"1")])
    late.flags.add("END_HEADERS")
    late.flags.add("END_STREAM")
    events = server.receive_data(late.serialize())
    assert not [e for e in events if isinstance(e, ev.ConnectionTerminated)]
    assert server.state_machine.state.name != "CLOSED"


async def test_a_long_lived_connection_keeps_nothing_per_request(env: Env) -> None:
    """Thousands of requests on one client connection, ending every which way (answered,
    answered before the request's end, reset by the client, answered by the proxy itself):
    nothing is left per request on either side, and once the client leaves, nothing at all."""
    from proxy.h2guard import MeshH2Connection

    client = await env.client()
    (session,) = env.sessions()
    bound = MeshH2Connection.MAX_CLOSED_STREAMS
    rounds = 2 * bound // 40 + 1
    for _ in range(rounds):
        sids = [client.request("/") for _ in range(36)]
        sids.append(client.request("/early", body=b"x", end=False))
        sids.append(client.request("/", authority=b"nosuch"))  # a local 404
        cancelled = client.request("/", body=b"x", end=False)  # the upstream waits for more
        await asyncio.sleep(0)
        client.reset(cancelled)
        sids.append(client.request("/big", body=b"x" * 10000))
        await eventually(lambda sids=sids: all(s in client.ended for s in sids), DEADLINE)
    conns = [c for pool in env.server.pools for c in pool.h2]  # (2 streams each at most)
    await eventually(lambda s=session: not s.streams and not any(c.streams for c in conns),
                     DEADLINE)
    assert not session._watch
    assert session.h2.open_inbound_streams == 0
    assert all(c.h2.open_outbound_streams == 0 for c in conns)
    for h2 in (session.h2, *(c.h2 for c in conns)):  # 2 * bound requests: more than remembered
        assert len(h2.streams) + len(h2._closed_streams) <= bound
    assert all(pool.active_requests == 0 for pool in env.server.pools)

    session_ref = weakref.ref(session)
    del session
    assert client.transport is not None
    client.transport.close()
    await eventually(lambda: env.session_count() == 0, DEADLINE)

    def swept() -> bool:  # (a sweep closes one idle upstream connection of a pool)
        for pool in env.server.pools:
            pool.sweep(asyncio.get_running_loop().time() + 3600)
        return all(p.connections == 0 and not p.h2 for p in env.server.pools)

    await eventually(swept, DEADLINE)
    gc.collect()
    assert session_ref() is None


# Heads the proxy answers itself (proxy.h2downstream's _refuse): `405` (CONNECT), `400` (no
# authority: proxy.h2headers' Unroutable, which counts against the connection's budget of
# malformed requests: one a round)
REFUSED: list[tuple[Headers, bytes]] = [
    ([(b":method", b"CONNECT"), (b":authority", b"svc:443")], b"405"),
    ([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/")], b"400"),
]


async def test_refusals_held_for_the_window_leave_nothing_behind(env: Env) -> None:
    """The proxy's own answers held back by a client's zero stream window: each stays (no
    exchange) until the window opens and its body has gone, then nothing of it is left; one the
    client resets meanwhile is dropped, and so is every one still held when the client leaves.
    Over more streams than h2 remembers, the count of streams kept stays bounded."""
    from proxy.h2guard import MeshH2Connection

    client = await env.client(window=0)
    (session,) = env.sessions()
    bound = MeshH2Connection.MAX_CLOSED_STREAMS
    rounds = 2 * bound // 40 + 1
    for _ in range(rounds):
        sids = [(client.send_head(head, end=n % 3 != 0), status)
                for n in range(40) for head, status in [REFUSED[n == 1]]]
        await eventually(lambda sids=sids: all(
            client.status.get(sid) == status for sid, status in sids), DEADLINE)
        assert len(session.streams) == len(sids)  # every answer held, none lost
        assert all(s.exchange is None and not s.out.ended for s in session.streams.values())
        reset = [sid for n, (sid, _) in enumerate(sids) if n % 4 == 0]
        for sid in reset:
            client.reset(sid)
        opened = [sid for sid, _ in sids if sid not in reset]
        for sid in opened:
            client.h2.increment_flow_control_window(1 << 16, sid)
        client.flush()
        await eventually(lambda opened=opened: set(opened) <= client.completed, DEADLINE)
        await eventually(lambda s=session: not s.streams, DEADLINE)
    assert not session._watch
    await eventually(lambda s=session: s.h2.open_inbound_streams == 0, DEADLINE)
    assert len(session.h2.streams) + len(session.h2._closed_streams) <= bound

    # held when the client leaves: dropped with the connection
    held = [client.send_head(REFUSED[n == 1][0], end=n % 2 == 0) for n in range(10)]
    await eventually(lambda: all(sid in client.status for sid in held), DEADLINE)
    assert len(session.streams) == len(held)
    session_ref = weakref.ref(session)
    del session
    assert client.transport is not None
    client.transport.close()
    await eventually(lambda: env.session_count() == 0, DEADLINE)
    gc.collect()
    assert session_ref() is None

"""A plain (non-gRPC) HTTP/2 server and client on the `h2` library, for the policy tests.

`H2Server` is an h2c (prior knowledge) server (or h2 over TLS, given a context) that records
every request it gets (pseudo-headers, headers, body, trailers) and answers by path:
  /status/<code>       that status;
  /fail-once/<key>     503 the first time it sees <key>, then 200;
  /reset-once/<key>    RST_STREAM the first time it sees <key>, then 200;
  /hang...             no answer ever (the stream is held open, counted in `hanging`);
  /late-grpc/<code>    a gRPC answer: headers, one message, then grpc-status <code> in trailers;
  anything else        200 with a JSON description of the request.
Every answer carries `x-served-by: <name>`. `always` overrides the path with a fixed status.

`H2Client` is a prior-knowledge h2c client with many concurrent requests on one connection.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.settings import SettingCodes, Settings

Headers = list[tuple[bytes, bytes]]


@dataclass
class Seen:
    """One request as the server got it."""

    headers: Headers
    body: bytes = b""
    trailers: Headers | None = None

    def get(self, name: str) -> str | None:
        key = name.encode()
        return next((v.decode() for n, v in self.headers if n == key), None)

    def all(self, name: str) -> list[str]:
        key = name.encode()
        return [v.decode() for n, v in self.headers if n == key]

    @property
    def path(self) -> str:
        return self.get(":path") or ""


class H2Server:
    """An h2c server on 127.0.0.1 (start it on the loop it will live on)."""

    def __init__(self, name: str, always: int | None = None, *, hang_all: bool = False,
                 late_grpc: str | None = None, max_streams: int | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.name = name
        self.ssl_context = ssl_context  # serve TLS (the context's ALPN) instead of h2c
        self.always = always
        self.hang_all = hang_all  # every request is held unanswered
        self.late_grpc = late_grpc  # every request answered as /late-grpc/<this>
        self.max_streams = max_streams  # SETTINGS_MAX_CONCURRENT_STREAMS announced
        self.requests: list[Seen] = []
        self.connections = 0  # accepted so far
        self.hanging = 0  # streams held without an answer now
        self.resets: list[str] = []  # paths of the streams the client reset (RST_STREAM)
        self.once: set[str] = set()
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.conns: list[_ServerConn] = []

    async def start(self) -> H2Server:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _ServerConn(self), "127.0.0.1", 0,
                                               ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.conns):
                if conn.transport is not None:
                    conn.transport.abort()

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]


class _ServerConn(asyncio.Protocol):
    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Seen] = {}
        self.answering: dict[int, Seen] = {}  # answers sent in part (/two-part/)
        self.held: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.server.conns.append(self)
        if self.server.max_streams is not None:
            self.h2.local_settings = Settings(client=False, initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams})
        self.h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.hanging -= len(self.held)
        self.held.clear()
        self.transport = None
        self.server.conns.remove(self)

    def data_received(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, RequestReceived):
                seen = Seen(list(event.headers))
                self.streams[event.stream_id] = seen
                self.server.requests.append(seen)
                if seen.path.startswith("/hang") or self.server.hang_all:
                    self.held.add(event.stream_id)
                    self.server.hanging += 1
            elif isinstance(event, DataReceived):
                seen = self.streams[event.stream_id]
                seen.body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, TrailersReceived):
                self.streams[event.stream_id].trailers = list(event.headers)
            elif isinstance(event, StreamEnded):
                self._answer(event.stream_id)
            elif isinstance(event, StreamReset):
                reset = self.streams.pop(event.stream_id, None) or self.answering.pop(
                    event.stream_id, None)
                self.server.resets.append(reset.path if reset is not None else "")
                if event.stream_id in self.held:
                    self.held.discard(event.stream_id)
                    self.server.hanging -= 1
        self._flush()

    def _answer(self, stream_id: int) -> None:
        seen = self.streams.pop(stream_id)
        path = seen.path
        served = (b"x-served-by", self.server.name.encode())
        status = self.server.always
        if self.server.late_grpc is not None:
            path = "/late-grpc/" + self.server.late_grpc
        if status is None and (path.startswith("/hang") or self.server.hang_all):
            return
        if status is None and path.startswith("/slow/"):
            seen.headers.append((b":slow", path.rsplit("/", 1)[1].encode()))
            asyncio.get_running_loop().call_later(float(path.rsplit("/", 1)[1]),
                                                  self._reply, stream_id, seen, 200, served)
            return
        if status is None and path.startswith(("/fail-once/", "/reset-once/")):
            key = path
            if key not in self.server.once:
                self.server.once.add(key)
                if path.startswith("/reset-once/"):
                    self.h2.reset_stream(stream_id, ErrorCodes.INTERNAL_ERROR)
                    return
                status = 503
        if status is None and path.startswith("/late-grpc/"):
            self.h2.send_headers(stream_id, [(b":status", b"200"),
                                             (b"content-type", b"application/grpc"), served])
            self.h2.send_data(stream_id, b"\x00\x00\x00\x00\x02hi")
            self.h2.send_headers(stream_id, [(b"grpc-status", path.rsplit("/", 1)[1].encode())],
                                 end_stream=True)
            return
        if status is None and path.startswith("/two-part/"):
            # the answer's body in two DATA frames, the second (END_STREAM) a moment later:
            # the client reads a DATA frame that does not end the stream
            self.h2.send_headers(stream_id, [(b":status", b"200"), served])
            self.h2.send_data(stream_id, b"first,")
            self._flush()
            self.answering[stream_id] = seen
            asyncio.get_running_loop().call_later(0.2, self._second_part, stream_id)
            return
        if status is None and path.startswith("/status/"):
            status = int(path.split("/")[2])
        if status is None:
            status = 200
        self._reply(stream_id, seen, status, served)

    def _second_part(self, stream_id: int) -> None:
        if self.transport is None or self.answering.pop(stream_id, None) is None:
            return  # reset meanwhile
        self.h2.send_data(stream_id, b"second", end_stream=True)
        self._flush()

    def _reply(self, stream_id: int, seen: Seen, status: int, served: tuple[bytes, bytes]
               ) -> None:
        if self.transport is None:
            return
        body = json.dumps({
            "server": self.server.name,
            "headers": [[n.decode(), v.decode()] for n, v in seen.headers],
            "body": seen.body.decode("latin-1"),
            "trailers": [[n.decode(), v.decode()] for n, v in seen.trailers or ()],
        }).encode()
        self.h2.send_headers(stream_id, [(b":status", str(status).encode()),
                                         (b"content-type", b"application/json"),
                                         (b"content-length", str(len(body)).encode()), served])
        self.h2.send_data(stream_id, body, end_stream=True)  # (bodies stay below the window)
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)


@dataclass
class Response:
    status: int = 0
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    trailers: Headers | None = None
    reset: int | None = None  # the RST_STREAM error code, when the stream was reset

    def get(self, name: str) -> str | None:
        key = name.encode()
        return next((v.decode() for n, v in [*self.headers, *(self.trailers or ())]
                     if n == key), None)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def seen(self) -> dict[str, str]:
        """The request headers the server reported (its JSON answer), last value wins."""
        return {n: v for n, v in self.json()["headers"]}


class H2Client:
    """A prior-knowledge h2c client connection; `request` may be called concurrently."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, tuple[Response, asyncio.Future[Response]]] = {}
        self.task: asyncio.Task[None] | None = None
        self.window = asyncio.Event()

    async def __aenter__(self) -> H2Client:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.h2.initiate_connection()
        self._flush()
        self.task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            self.writer.close()

    async def request(self, authority: str, path: str = "/", timeout: float = 10.0,
                      **kw: Any) -> Response:
        return await asyncio.wait_for(self.send(authority, path, **kw), timeout)

    def send(self, authority: str, path: str = "/", method: str = "GET",
             headers: Headers | list[tuple[str, str]] = (),  # type: ignore[assignment]
             body: bytes = b"", trailers: Headers | None = None,
             scheme: str = "http") -> asyncio.Future[Response]:
        """Send a request now; its response when the future is done."""
        sid = self.h2.get_next_available_stream_id()
        extra = [(n.encode() if isinstance(n, str) else n, v.encode() if isinstance(v, str)
                  else v) for n, v in headers]
        head = [(b":method", method.encode()), (b":scheme", scheme.encode()),
                (b":authority", authority.encode()), (b":path", path.encode()), *extra]
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self.pending[sid] = (Response(), future)
        self.h2.send_headers(sid, head, end_stream=not body and trailers is None)
        if body:
            self.h2.send_data(sid, body, end_stream=trailers is None)
        if trailers is not None:
            self.h2.send_headers(sid, trailers, end_stream=True)
        self._flush()
        return future

    def cancel(self, stream_id: int) -> None:
        self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
        self._flush()

    async def _read(self) -> None:
        assert self.reader is not None
        while True:
            data = await self.reader.read(65536)
            if not data:
                for _, future in self.pending.values():
                    if not future.done():
                        future.set_exception(ConnectionError("connection closed"))
                return
            for event in self.h2.receive_data(data):
                sid = getattr(event, "stream_id", None)
                entry = self.pending.get(sid) if sid else None
                if isinstance(event, WindowUpdated):
                    continue
                if isinstance(event, ConnectionTerminated):
                    continue
                if entry is None:
                    continue
                resp, future = entry
                if isinstance(event, ResponseReceived):
                    for name, value in event.headers:
                        if name == b":status":
                            resp.status = int(value)
                        else:
                            resp.headers.append((name, value))
                elif isinstance(event, DataReceived):
                    resp.body += event.data
                    self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
                elif isinstance(event, TrailersReceived):
                    resp.trailers = list(event.headers)
                elif isinstance(event, StreamEnded | StreamReset):
                    if isinstance(event, StreamReset):
                        resp.reset = event.error_code
                    del self.pending[sid]
                    if not future.done():
                        future.set_result(resp)
            self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.writer is not None:
            self.writer.write(data)


async def h2_request(port: int, authority: str, path: str = "/", **kw: Any) -> Response:
    """One request on a connection of its own."""
    async with H2Client(port) as client:
        return await client.request(authority, path, **kw)


GRPC = [("content-type", "application/grpc"), ("te", "trailers")]
GRPC_MESSAGE = b"\x00\x00\x00\x00\x03abc"  # one uncompressed 3-byte message

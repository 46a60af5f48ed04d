"""A raw HTTP/2 (`h2` library) ext_authz gRPC provider that answers
`envoy.service.auth.v3.Authorization/Check` byte by byte, for the wire tests of
test_extauthz_grpc_wire: what a grpcio server never sends (a message split across DATA
frames, a compressed flag, two messages, an oversized answer, a GOAWAY below the call's
stream, REFUSED_STREAM, a `:status` other than 200, a trailers-only answer, Envoy's
error_response) and what it does not show (the resets it gets, its connections).

It answers by the checked request's path (`attributes.request.http.path`):
  /split/*           OK, its one message in three DATA frames;
  /compressed/*      OK with the compressed flag set;
  /two/*             two messages;
  /big/*             a message of 256 KiB, in 16 KiB DATA frames, never ended;
  /status503/*       `:status 503`;
  /trailers-only/*   one HEADERS: `:status 200`, `grpc-status 7` (PERMISSION_DENIED);
  /ok-then-internal/* an OK CheckResponse, then `grpc-status 13` (INTERNAL) in its trailers;
  /error/*           PERMISSION_DENIED... with Envoy's error_response (503, retry-after, body);
  /error-plain/*     an error_response without a status;
  /goaway-once/*     the first time: GOAWAY with a last stream id below the call's;
  /refused-once/*    the first time: RST_STREAM REFUSED_STREAM;
  /refused-late-once/* the first time: RST_STREAM REFUSED_STREAM after LATE seconds;
  /hang/*            no answer (the stream held);
  /close-after/*     OK, then the connection closed (no GOAWAY);
  anything else      OK.
With `settings_delay`, each connection's SETTINGS (the server's preface) waits that long: the
client cannot open a stream meanwhile, so the checks arriving then share one connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes, Settings

from proxy.authzproto.external_auth_pb2 import CheckRequest, CheckResponse

Headers = list[tuple[bytes, bytes]]
ERROR_BODY = "the policy store is down\n"
PERMISSION_DENIED = 7
LATE = 0.5  # seconds /refused-late-once/* holds its first call before refusing it


@dataclass
class Call:
    """One Check call as the provider got it."""

    headers: Headers
    connection: int  # which of the server's connections (1, 2...)
    body: bytes = b""
    path: str = ""  # the checked request's

    def header(self, name: str) -> str | None:
        return next((v.decode() for n, v in self.headers if n == name.encode()), None)


@dataclass
class WireAuthz:
    """The provider (start it on the loop it will live on)."""

    max_streams: int | None = None  # SETTINGS_MAX_CONCURRENT_STREAMS announced
    settings_delay: float = 0.0
    answer_delay: float = 0.0  # each answer waits that long
    calls: list[Call] = field(default_factory=list)
    resets: list[str] = field(default_factory=list)  # checked paths whose stream was reset
    connections: int = 0
    port: int = 0
    once: set[str] = field(default_factory=set)
    server: asyncio.base_events.Server | None = None

    async def start(self) -> WireAuthz:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Conn(self), "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def checked(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]


def _message(answer: CheckResponse, flag: int = 0) -> bytes:
    body = answer.SerializeToString()
    return bytes([flag]) + len(body).to_bytes(4, "big") + body


def _ok() -> CheckResponse:
    answer = CheckResponse()
    answer.status.code = 0
    answer.ok_response.SetInParent()
    return answer


class _Conn(asyncio.Protocol):
    def __init__(self, server: WireAuthz) -> None:
        self.server = server
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.transport: asyncio.Transport | None = None
        self.calls: dict[int, Call] = {}
        self.number = 0
        self.prefaced = False
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections += 1
        self.number = self.server.connections
        if self.server.max_streams is not None:
            self.h2.local_settings = Settings(client=False, initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: self.server.max_streams})
        if self.server.settings_delay:
            asyncio.get_running_loop().call_later(self.server.settings_delay, self._preface)
        else:
            self._preface()

    def _preface(self) -> None:
        if self.transport is None:
            return
        self.h2.initiate_connection()
        self.prefaced = True
        self._flush()
        if self.pending:
            pending, self.pending = self.pending, b""
            self.data_received(pending)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        if not self.prefaced:  # (read once ours is sent: our SETTINGS come first)
            self.pending += data
            return
        for event in self.h2.receive_data(data):
            if isinstance(event, RequestReceived):
                self.calls[event.stream_id] = Call(list(event.headers), self.number)
            elif isinstance(event, DataReceived):
                self.calls[event.stream_id].body += event.data
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                call = self.calls[event.stream_id]
                request = CheckRequest.FromString(call.body[5:])
                call.path = request.attributes.request.http.path
                self.server.calls.append(call)
                if self.server.answer_delay:
                    asyncio.get_running_loop().call_later(
                        self.server.answer_delay, self._answer_now, event.stream_id, call)
                else:
                    self._answer(event.stream_id, call)
            elif isinstance(event, StreamReset):
                call = self.calls.pop(event.stream_id, None)
                self.server.resets.append(call.path if call is not None else "")
        self._flush()

    def _answer_now(self, stream_id: int, call: Call) -> None:
        if self.transport is not None and stream_id in self.calls:
            self._answer(stream_id, call)
            self._flush()

    def _answer(self, stream_id: int, call: Call) -> None:
        path, h2 = call.path, self.h2
        kind = path.split("/")[1] if path.count("/") >= 2 else ""
        if kind == "refused-late-once" and path not in self.server.once:
            self.server.once.add(path)
            asyncio.get_running_loop().call_later(LATE, self._refuse, stream_id)
            return
        if kind in ("goaway-once", "refused-once") and path not in self.server.once:
            self.server.once.add(path)
            self.calls.pop(stream_id)
            if kind == "goaway-once":
                # the last stream id before this call's: 0 when it is the connection's
                # first (a negative id would go out as 2^31-1, "all may have been seen")
                h2.close_connection(ErrorCodes.NO_ERROR, last_stream_id=max(stream_id - 2, 0))
            else:
                h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            return
        if kind == "hang":
            return
        if kind == "status503":
            h2.send_headers(stream_id, [(b":status", b"503")], end_stream=True)
            self.calls.pop(stream_id)
            return
        if kind == "trailers-only":
            h2.send_headers(stream_id, [(b":status", b"200"),
                                        (b"content-type", b"application/grpc"),
                                        (b"grpc-status", b"7")], end_stream=True)
            self.calls.pop(stream_id)
            return
        h2.send_headers(stream_id, [(b":status", b"200"),
                                    (b"content-type", b"application/grpc")])
        if kind == "big":
            self._big(stream_id)
            return
        answer = _ok()
        if kind in ("error", "error-plain"):
            answer = CheckResponse()
            answer.status.code = PERMISSION_DENIED
            error = answer.error_response
            if kind == "error":
                error.status.code = 503  # type: ignore[assignment]  # (an open enum)
                option = error.headers.add()
                option.header.key, option.header.value = "retry-after", "7"
                error.body = ERROR_BODY
            else:
                error.SetInParent()
        message = _message(answer, 1 if kind == "compressed" else 0)
        if kind == "close-after" and self.transport is not None:
            h2.send_data(stream_id, message)
            h2.send_headers(stream_id, [(b"grpc-status", b"0")], end_stream=True)
            self.calls.pop(stream_id)
            self._flush()
            self.transport.close()  # (no GOAWAY: the connection just ends)
            return
        if kind == "split":
            for part in (message[:3], message[3:7], message[7:]):
                h2.send_data(stream_id, part)
        elif kind == "two":
            h2.send_data(stream_id, message + message)
        else:
            h2.send_data(stream_id, message)
        status = b"13" if kind == "ok-then-internal" else b"0"
        h2.send_headers(stream_id, [(b"grpc-status", status)], end_stream=True)
        self.calls.pop(stream_id)

    def _refuse(self, stream_id: int) -> None:
        if self.transport is not None and self.calls.pop(stream_id, None) is not None:
            self.h2.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)
            self._flush()

    def _big(self, stream_id: int) -> None:
        """A message announcing 256 KiB, sent in 16 KiB frames as the window allows, and then
        never ended: only a reset from the client ends the stream."""
        size = 256 * 1024
        chunk = b"\x00" + size.to_bytes(4, "big") + b"x" * (16 * 1024 - 5)
        sent = 0
        while sent < size and self.h2.local_flow_control_window(stream_id) >= len(chunk):
            self.h2.send_data(stream_id, chunk)
            sent += len(chunk)
            chunk = b"x" * (16 * 1024)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

"""A real gRPC server and client (grpcio) for the HTTP/2 tests, without generated code.

Methods take and return raw bytes (identity serializers) under the service `ami.test.Echo`:
`Unary` echoes its request and the caller's metadata, `Stream` answers with N messages,
`Collect` joins a client stream, `Chat` echoes a bidirectional stream, `Fail` answers the
gRPC status named in its request, `Flaky` fails with UNAVAILABLE the first time it sees a
request and succeeds after, `Slow` waits the seconds it is given (counting the calls cancelled
meanwhile), and `Big` returns that many bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc

SERVICE = "ami.test.Echo"


def _identity(data: bytes) -> bytes:
    return data


class EchoServer:
    """`grpc.aio` server on 127.0.0.1:<port> (h2c, or TLS), counting the calls it received."""

    def __init__(self, name: str = "echo", options: tuple[tuple[str, Any], ...] = (),
                 tls: tuple[bytes, bytes] | None = None) -> None:
        self.name = name  # answered in every reply, so tests see which instance answered
        self.options = options  # grpc.aio.server options, e.g. grpc.max_concurrent_streams
        self.tls = tls  # (private key, certificate chain) PEM: serve TLS (ALPN h2), not h2c
        self.calls = 0
        self.cancelled = 0
        self.sleeping = 0  # Slow calls in their sleep now
        self.seen: set[bytes] = set()
        self.down = False  # every Unary call fails with UNAVAILABLE (trailers-only)
        self.received: list[bytes] = []  # Unary requests, in order
        self.server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> EchoServer:
        self.server = grpc.aio.server(options=self.options)
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(
                self._unary, _identity, _identity),
            "Stream": grpc.unary_stream_rpc_method_handler(
                self._stream, _identity, _identity),
            "Collect": grpc.stream_unary_rpc_method_handler(
                self._collect, _identity, _identity),
            "Chat": grpc.stream_stream_rpc_method_handler(
                self._chat, _identity, _identity),
            "Fail": grpc.unary_unary_rpc_method_handler(self._fail, _identity, _identity),
            "Slow": grpc.unary_unary_rpc_method_handler(self._slow, _identity, _identity),
            "Flaky": grpc.unary_unary_rpc_method_handler(self._flaky, _identity, _identity),
            "Big": grpc.unary_unary_rpc_method_handler(self._big, _identity, _identity),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),))
        if self.tls is None:
            self.port = self.server.add_insecure_port("127.0.0.1:0")
        else:
            self.port = self.server.add_secure_port(
                "127.0.0.1:0", grpc.ssl_server_credentials((self.tls,)))
        await self.server.start()
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    async def _unary(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        self.received.append(request)
        if self.down:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is down")
        metadata = {k: v for k, v in context.invocation_metadata() or ()
                    if isinstance(v, str)}
        await context.send_initial_metadata((("x-served-by", self.name),))
        context.set_trailing_metadata((("x-trailer", "kept"),))
        return json.dumps({"server": self.name, "request": request.decode(),
                           "metadata": metadata}).encode()

    async def _stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        self.calls += 1
        for i in range(int(request)):
            yield b"%s-%d" % (self.name.encode(), i)

    async def _collect(self, requests: AsyncIterator[bytes], context: Any) -> bytes:
        self.calls += 1
        parts = [r async for r in requests]
        return b"|".join(parts)

    async def _chat(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        self.calls += 1
        async for r in requests:
            yield b"echo:" + r

    async def _fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        await context.abort(grpc.StatusCode[request.decode()], f"{self.name} failed on purpose")
        return b""  # not reached: abort raises

    async def _flaky(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.calls += 1
        if request not in self.seen:
            self.seen.add(request)
            await context.abort(grpc.StatusCode.UNAVAILABLE, "first try fails")
        return self.name.encode()

    async def _slow(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        self.sleeping += 1
        try:
            await asyncio.sleep(float(request))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        finally:
            self.sleeping -= 1
        return self.name.encode()

    async def _big(self, request: bytes, context: Any) -> bytes:
        self.calls += 1
        return b"x" * int(request)


def channel(port: int, authority: str) -> grpc.aio.Channel:
    """A plaintext (h2c) channel to 127.0.0.1:`port` that names `authority` (the service)."""
    return grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=(("grpc.default_authority", authority), ("grpc.enable_retries", 0),
                 ("grpc.max_receive_message_length", 64 * 1024 * 1024)))


def method(ch: grpc.aio.Channel, name: str, kind: str = "unary_unary") -> Any:
    """A callable for `ami.test.Echo/<name>` taking and returning bytes."""
    factory = getattr(ch, kind)
    return factory(f"/{SERVICE}/{name}", request_serializer=_identity,
                   response_deserializer=_identity)


@contextlib.contextmanager
def serving_in_thread(*servers: EchoServer, deadline: float = 10.0) -> Iterator[None]:
    """Run `servers` on an event loop of their own thread (the tests' loops stay free to be
    blocked or closed), and stop them on exit."""
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        for server in servers:
            loop.run_until_complete(server.start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(deadline), "the gRPC servers did not start"
    try:
        yield
    finally:
        for server in servers:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(deadline)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(deadline)

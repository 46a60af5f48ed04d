"""AuthorizationPolicy CUSTOM with an envoyExtAuthzGrpc provider: Envoy's
`envoy.service.auth.v3.Authorization/Check`, one gRPC call on an HTTP/2 stream of this
proxy's own endpoint pools (mTLS to a mesh service, h2c or originated TLS to an
ExternalService host), read as Envoy's ext_authz filter reads it.

Only the asking and the reading are here: selection, the wait, and what an allow, a denial or
an error does are `proxy.extauthz.ExtAuthzCheck`'s, shared with the HTTP provider.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING, Any

from proxy.accessline import wall_clock
from proxy.extauthz import _FRAMING, MAX_ANSWER, CheckFailed, ExtAuthzCheck

if TYPE_CHECKING:
    from meshctl.api.extauthz import ExtAuthzGrpc
    from proxy.authzproto.external_auth_pb2 import CheckRequest, CheckResponse
    from proxy.exchange import Exchange
    from proxy.h2flow import Headers
    from proxy.h2upstream import H2UpstreamStream
    from proxy.pools import EndpointPool, PoolRegistry

log = logging.getLogger("ami.proxy.extauthz")

PATH = b"/envoy.service.auth.v3.Authorization/Check"
# Envoy's header map holds neither these (the connection's own) nor what Ami adds for itself.
_NOT_SENT = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade",
                       b"transfer-encoding", b"host", b"x-ami-peer", b"http2-settings"})
# HeaderValueOption.append_action (Envoy's core.v3 enum)
_ADD_IF_ABSENT, _OVERWRITE_IF_EXISTS = 1, 3
# what the provider may name and write in a header: a token, and a value with no CR, LF, NUL
_NAME = re.compile(rb"^[-!#$%&'*+.^_`|~0-9a-z]+$")
_VALUE = re.compile(rb"^[^\r\n\x00]*$")
# The request's authority and framing: not the provider's to set or remove (an edit of them
# is ignored, as Envoy ignores removing `host` or a pseudo-header).
_PROTECTED = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection",
                        b"keep-alive", b"te", b"upgrade", b"expect"})


class GrpcCheck(ExtAuthzCheck):
    """An envoyExtAuthzGrpc provider's check: status OK allows (with ok_response's header
    edits), any other status denies (denied_response's status, 403 without one; its headers
    and body) or, with an error_response, is an error (answered as that says); a transport
    error, a gRPC error status or no answer is an error."""

    spec: ExtAuthzGrpc
    pools: PoolRegistry | None = None  # this proxy's: its workload identity, once it has one

    async def _ask(self, ex: Exchange) -> CheckResponse:
        from proxy.authzproto.external_auth_pb2 import CheckResponse

        backend = self.backend
        pool = backend.pick_endpoint() if backend is not None else None
        if pool is None:
            raise CheckFailed(f"no endpoint of {self.spec.service}")
        if pool.h1_only:
            raise CheckFailed(f"{self.spec.service} speaks HTTP/1.1 only: a gRPC check needs "
                              "HTTP/2 (its Service port's appProtocol)")
        tls = self.pools.tls if self.pools is not None else None
        message = check_request(ex, tls.identity.spiffe_id if tls is not None else ""
                                ).SerializeToString()
        frame = b"\x00" + len(message).to_bytes(4, "big") + message
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.spec.timeout  # (the check's: _check's wait_for)
        try:
            body = await self._call(ex, pool, frame, self.spec.timeout)
        except _Unprocessed:  # refused unseen (a GOAWAY, REFUSED_STREAM): once more, told
            # the time left of the check's deadline, as a gRPC retry's grpc-timeout is
            body = await self._call(ex, pool, frame, deadline - loop.time())
        try:
            answer: CheckResponse = CheckResponse.FromString(body)
        except Exception as err:  # protobuf's DecodeError (its module varies by backend)
            raise CheckFailed(f"malformed CheckResponse: {err}") from None
        return answer

    async def _call(self, ex: Exchange, pool: EndpointPool, frame: bytes,
                    timeout: float) -> bytes:
        """One Check call on a stream of ``pool``'s HTTP/2 connections, told it has
        ``timeout`` seconds (its `grpc-timeout`): its message."""
        conn = pool.take_h2()
        while conn is None:
            # (shielded: shared with the checks and requests arriving while it opens) The
            # checks that waited with this one may fill it (the provider's
            # SETTINGS_MAX_CONCURRENT_STREAMS): then another connection, as requests do
            # (each round serves one check at least; the check's timeout bounds them all).
            opened = await asyncio.shield(pool.connect_h2_shared())
            if opened.has_room():
                conn = opened
            elif not opened.streams:  # full with nothing of ours on it: a GOAWAY, a limit of 0
                raise CheckFailed(f"{pool.address} takes no new stream")
            else:
                conn = pool.take_h2()
        call = _Call(asyncio.get_running_loop().create_future())
        stream = conn.open_stream(call)  # type: ignore[arg-type]  # same callback surface
        call.stream = stream
        try:
            stream.send_headers(self._headers(ex, pool, timeout), False)
            stream.last = True  # the one message ends the request
            stream.write(frame)
            return await call.answer
        finally:
            call.drop()

    def _headers(self, ex: Exchange, pool: EndpointPool, timeout: float) -> Headers:
        # grpc-timeout: the provider may give up when the check would no longer be waited for
        headers: Headers = [
            (b":method", b"POST"),
            (b":scheme", b"http" if pool.origination is None else b"https"),
            (b":authority", self.spec.service.encode("latin-1")),
            (b":path", PATH), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
            (b"grpc-timeout", grpc_timeout(timeout))]
        peer = ex.downstream.listener.peer_line  # (a gateway's; an inbound listener has none)
        if peer and pool.tls is not None:  # who asks, for the provider's sidecar: over mTLS
            name, _, value = peer.partition(b":")
            headers.append((name, value.strip()))
        return headers

    def _decide(self, ex: Exchange, answer: CheckResponse | None) -> None:
        if answer is None:
            self._failed(ex)
        elif answer.status.code != 0 and answer.HasField("error_response"):
            # The provider failed and says how to answer (newer Envoy's error_response): an
            # error, not a denial (failOpen lets it through); no status: statusOnError.
            error = answer.error_response
            status = int(error.status.code)
            self._failed(ex, status if 200 <= status <= 599 else 0, _refusal(error.headers),
                         error.body.encode() if error.body else None)
        elif answer.status.code != 0:
            denied = answer.denied_response
            status = int(denied.status.code)
            if not 200 <= status <= 599:
                status = 403  # (absent, 0: Envoy's default)
            self._denied(ex, status, _refusal(denied.headers), denied.body.encode())
        else:
            ok = answer.ok_response
            present = {n.lower().replace(b"_", b"-") for n, _ in ex.headers}
            upstream, append = [], []
            remove = {n.lower().encode("utf-8") for n in ok.headers_to_remove}
            remove = {n for n in remove if not n.startswith(b":") and n not in _PROTECTED}
            for name, value, how in _options(ok.headers):
                if name in _PROTECTED or name in remove:
                    continue  # (Envoy removes after it sets and appends: removal wins)
                there = name.replace(b"_", b"-") in present
                if how == "append":
                    append.append((name, value))
                elif (how == "set" or (how == "absent" and not there)
                      or (how == "exists" and there)):
                    upstream.append((name, value))
            response = [(n, v, how) for n, v, how in _options(ok.response_headers_to_add)
                        if n not in _FRAMING]
            # `append` true adds beside the app's header (a second set-cookie...), else set
            self._allowed(ex, upstream, append, remove,
                          [(n, v) for n, v, how in response if how != "append"],
                          [(n, v) for n, v, how in response if how == "append"])


def grpc_timeout(seconds: float) -> bytes:
    """``seconds`` as a `grpc-timeout` value: at most 8 digits, in the finest unit that fits
    (milliseconds, then seconds, minutes, hours), rounded down, at least 1."""
    for unit, per_second in ((b"m", 1000.0), (b"S", 1.0), (b"M", 1 / 60), (b"H", 1 / 3600)):
        value = int(seconds * per_second)
        if value < 10**8:
            return b"%d%s" % (max(1, value), unit)
    return b"99999999H"


def _refusal(options: Any) -> tuple[tuple[bytes, bytes], ...]:
    """A denial's or an error's headers for the client (never its framing)."""
    return tuple((n, v) for n, v, _ in _options(options) if n not in _FRAMING)


def _options(options: Any) -> list[tuple[bytes, bytes, str]]:
    """HeaderValueOptions as (lower-case name, value, "set" | "append" | "absent" |
    "exists"); a pseudo-header, or a name or value HTTP cannot carry, is dropped (logged: a
    provider cannot split a header line or rewrite the request's target). As Envoy reads them in
    an ext_authz answer: `append` true appends, false (or unset) sets; without `append`,
    `append_action` ADD_IF_ABSENT and OVERWRITE_IF_EXISTS are honoured, the others set."""
    out = []
    for option in options:
        header = option.header
        name = header.key.lower().encode("utf-8")
        value = header.value.encode("utf-8") if header.value else header.raw_value
        if not _NAME.match(name) or not _VALUE.match(value):  # (a pseudo-header too)
            log.info("ext_authz answer: header %r dropped (not an HTTP header Ami sets)",
                     header.key)
            continue
        if option.HasField("append"):
            how = "append" if option.append.value else "set"
        else:
            how = {_ADD_IF_ABSENT: "absent", _OVERWRITE_IF_EXISTS: "exists"}.get(
                option.append_action, "set")
        out.append((name, value, how))
    return out


def check_request(ex: Exchange, own_id: str = "") -> CheckRequest:
    """What Envoy's ext_authz filter tells the provider of ``ex``: the peers (over mTLS, the
    caller's SPIFFE id as source.principal and ``own_id``, this proxy's, as
    destination.principal), and the request's start time, id, method, headers (with Envoy's
    pseudo-headers, merged with ',' when repeated), path with query, host, scheme, protocol
    and size (its Content-Length; -1 unknown)."""
    from proxy.authzproto.external_auth_pb2 import CheckRequest

    request = CheckRequest()
    attributes = request.attributes
    conn = ex.downstream
    transport = getattr(getattr(conn, "session", conn), "transport", None)
    _address(attributes.source.address, transport, "peername")
    attributes.source.principal = conn.peer_identity or ""
    _address(attributes.destination.address, transport, "sockname")
    if conn.peer_identity:  # (Envoy's: its own certificate's URI SAN, on a TLS connection)
        attributes.destination.principal = own_id
    http = attributes.request.http
    target = ex.target if ex.target.startswith(b"/") else ex.path.encode("latin-1")
    scheme = getattr(ex, "scheme", b"http").decode("latin-1")
    headers: dict[str, str] = {
        ":authority": ex.authority, ":method": ex.method.decode("latin-1"),
        ":path": target.decode("latin-1"), ":scheme": scheme}
    pairs = list(ex.headers)
    for lines in ex.head_tail:  # what the proxy adds (x-forwarded-proto, x-request-id...)
        for line in lines.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            if colon:
                pairs.append((name.strip(), value.strip()))
    for name, value in pairs:
        low = name.lower()
        if low in _NOT_SENT or low.startswith(b":"):
            continue
        key, text = low.decode("latin-1"), value.decode("latin-1")
        headers[key] = f"{headers[key]},{text}" if key in headers else text
    http.headers.update(headers)
    http.id = headers.get("x-request-id", "")
    http.method = headers[":method"]
    http.path = headers[":path"]
    http.host = ex.authority
    http.scheme = scheme
    http.protocol = ex.protocol
    length = headers.get("content-length", "")
    http.size = int(length) if length.isdigit() else -1
    # when the request started (its head read), as Envoy's stream start time
    attributes.request.time.FromNanoseconds(int(wall_clock(ex.start_time) * 1e9))
    return request


def _address(address: Any, transport: Any, which: str) -> None:
    where = transport.get_extra_info(which) if transport is not None else None
    if isinstance(where, tuple) and len(where) >= 2:
        address.socket_address.address = str(where[0])
        address.socket_address.port_value = int(where[1])


class _Unprocessed(CheckFailed):
    """The provider refused the call before looking at it: it may be sent again."""


class _Call:
    """The check's stream: the callbacks an H2UpstreamStream makes, its answer's message."""

    __slots__ = ("_body", "_size", "answer", "grpc_message", "grpc_status", "status", "stream")

    def __init__(self, answer: asyncio.Future[bytes]) -> None:
        self.answer = answer
        self.stream: H2UpstreamStream | None = None
        self.status = b""
        self.grpc_status: bytes | None = None
        self.grpc_message = b""
        self._body: list[bytes] = []
        self._size = 0

    def drop(self) -> None:
        """The check is over: a stream still open (a timeout, a client gone) is reset."""
        stream, self.stream = self.stream, None
        if stream is not None:
            stream.abort()

    def _fail(self, why: str, error: type[CheckFailed] = CheckFailed) -> None:
        """The stream ended (or is given up) without a usable answer."""
        if not self.answer.done():
            self.answer.set_exception(error(why))

    def _read_status(self, headers: Headers) -> None:
        for name, value in headers:
            if name == b":status":
                self.status = value
            elif name == b"grpc-status":
                self.grpc_status = value
            elif name == b"grpc-message":
                self.grpc_message = value

    def h2_response_head(self, stream: H2UpstreamStream, headers: Headers,
                         end_stream: bool) -> None:
        self._read_status(headers)  # (a trailers-only answer carries grpc-status here)

    def h2_response_data(self, chunk: bytes, end: bool = False) -> None:
        self._body.append(chunk)
        self._size += len(chunk)
        if self._size > MAX_ANSWER:
            self._fail(f"answer over {MAX_ANSWER} bytes")
            self.drop()

    def h2_response_trailers(self, headers: Headers) -> None:
        self._read_status(headers)

    def h2_response_end(self, stream: H2UpstreamStream) -> None:
        self.stream = None  # (ended: nothing to reset)
        if self.answer.done():
            return
        if self.status != b"200":
            self._fail(f"answered HTTP {self.status.decode('latin-1') or '(none)'}")
        elif self.grpc_status != b"0":
            self._fail("gRPC status " + (self.grpc_status or b"(none)").decode("latin-1")
                       + (f" ({self.grpc_message.decode('latin-1')})"
                          if self.grpc_message else ""))
        else:
            body = b"".join(self._body)
            if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
                self._fail("not one uncompressed gRPC message")
            else:
                self.answer.set_result(body[5:])

    def h2_upstream_reset(self, stream: H2UpstreamStream) -> None:
        self.stream = None  # (reset by the provider, or refused: already gone)
        self._fail("stream reset by the provider",
                   _Unprocessed if stream.unprocessed else CheckFailed)

    def h2_upstream_failed(self, stream: H2UpstreamStream, reason: str) -> None:
        self.stream = None
        self._fail(reason)

    def upstream_write_paused(self, paused: bool) -> None:
        pass  # one small message

    def internal_error(self) -> None:
        self._fail("internal error")
        self.drop()

"""The request head: the header checks and rewrites of the HTTP/1.1 hardening rules.

`DownstreamProtocol` binds the httptools header callbacks from here. Each header is checked as
it arrives (sizes, smuggling, duplicate Host), hop-by-hop and identity headers are dropped (a
trusted peer's XFCC is kept, for the sidecar to append to), and
the finished head becomes an `Exchange` with a normalised target and the lines the proxy adds.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING

from proxy.exchange import Exchange
from proxy.headers import (
    IDENTITY_HEADERS,
    KNOWN_AUTHORITIES,
    XFCC,
    _id_lines,
    appended_xfcc,
    connection_tokens,
    normalize_path,
    request_id_line,
    split_target,
    valid_authority,
)

if TYPE_CHECKING:
    from proxy.downstream import DownstreamProtocol

# Header names the parser treats specially (everything else is forwarded untouched).
(_H_HOST, _H_CONNECTION, _H_DROP, _H_TE, _H_EXPECT, _H_XFF, _H_REQUEST_ID, _H_UPGRADE,
 _H_TIMEOUT, _H_PEER, _H_XFCC, _H_PROXY_CONNECTION) = range(12)
_SPECIAL: dict[bytes, int] = {
    b"host": _H_HOST,
    b"connection": _H_CONNECTION,
    b"keep-alive": _H_DROP,
    b"proxy-connection": _H_PROXY_CONNECTION,  # dropped; llhttp reads it as Connection
    b"te": _H_DROP,
    b"trailer": _H_DROP,
    b"proxy-authorization": _H_DROP,
    b"x-forwarded-proto": _H_DROP,
    b"transfer-encoding": _H_TE,
    b"expect": _H_EXPECT,
    b"x-forwarded-for": _H_XFF,
    b"x-request-id": _H_REQUEST_ID,
    b"upgrade": _H_UPGRADE,
    b"x-ami-timeout-ms": _H_TIMEOUT,
    b"x-ami-peer": _H_PEER,
}
for _name in IDENTITY_HEADERS:
    _SPECIAL[_name] = _H_DROP
_SPECIAL[XFCC] = _H_XFCC  # the `_` spellings stay dropped, from every peer
# Connection options that are not header names (or name a header that must stay: Host).
_CONNECTION_OPTIONS = frozenset({b"keep-alive", b"close", b"upgrade", b"host"})


class Reject(Exception):
    """Raised inside a parser callback to stop parsing and answer with a reason word."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def on_message_begin(p: DownstreamProtocol) -> None:
    """A new request: reset the per-request parse state."""
    p._url = b""
    p._headers = []
    p._host = None
    if p._special:
        # Only a header of a special kind (on_header) sets these: a request without one
        # leaves them as they are, so most requests reset three attributes, not twelve.
        p._special = False
        p._xff = None
        p._has_request_id = False
        p._chunked = False
        p._expect_continue = False
        p._upgrade_value = None
        p._upgrade_seen = False
        p._conn_tokens = None
        p._connection_seen = False
        p._timeout_override = None
        p._xfcc_kept = None  # (a request refused before _head_tail must not leave its XFCC)
    p._in_head = True
    p._head_bytes = 0
    p._header_budget = p.listener.limits.max_header_bytes
    # The request's start: the monotonic clock itself, not the loop's cached time (uvloop's
    # is whole milliseconds, read once per iteration), so its duration is a measure.
    p.head_started = monotonic()


def on_url(p: DownstreamProtocol, url: bytes) -> None:
    """Collect the request target (it may arrive in pieces)."""
    p._url += url
    if len(p._url) > p.listener.limits.max_request_line:
        raise Reject("uri_too_long")


def on_header(p: DownstreamProtocol, name: bytes, value: bytes) -> None:
    """Check one header; keep it for forwarding or act on it (hop-by-hop, framing, ours)."""
    # data_received counts raw bytes only after the read that began the head, so a large
    # head arriving in one read is caught here, header by header.
    p._header_budget -= len(name) + len(value) + 4
    if p._header_budget < 0:
        raise Reject("headers_too_large")
    if not p._in_head:
        # A trailer of a chunked body (bounded by the same budget). Dropped, as Envoy's
        # HTTP/1.1 codec does by default: the head may already be upstream, and a trailer
        # must never become a header there that no route rule or policy saw (RFC 9110 6.5.1).
        return
    kind = _SPECIAL.get(name.lower())
    if kind is None:
        p._headers.append((name, value))
        return
    if kind == _H_HOST:
        if p._host is not None:
            raise Reject("bad_request")  # two Host headers: ambiguous authority
        p._host = value
        p._headers.append((name, value))
        return
    if kind == _H_DROP:
        return  # hop-by-hop or identity: not forwarded, no state
    p._special = True  # per-request state below: on_message_begin resets it
    if kind == _H_TE:
        if value.strip().lower() != b"chunked" or p._chunked:
            raise Reject("request_smuggling")  # only a single "chunked" is accepted
        p._chunked = True
    elif kind == _H_EXPECT:
        if value.strip().lower() == b"100-continue":
            p._expect_continue = True
        else:
            p._headers.append((name, value))
    elif kind == _H_XFF:
        p._xff = value if p._xff is None else p._xff + b", " + value
    elif kind == _H_REQUEST_ID:
        p._has_request_id = True
        p._headers.append((name, value))
    elif kind == _H_UPGRADE:
        p._upgrade_seen = True  # (llhttp's upgrade flag needs this header: exchange_from_head)
        # Only WebSocket is tunnelled (as Envoy's default upgrade_configs). Any other upgrade,
        # `h2c` above all, is not forwarded: tunnelled, it would carry later requests past
        # every per-request policy (h2c smuggling). Such a request is answered as HTTP/1.1,
        # then the connection closes (exchange_from_head).
        if b"websocket" in connection_tokens(value):
            p._upgrade_value = value
    elif kind == _H_CONNECTION:
        p._connection_seen = True
        # Names listed in Connection are hop-by-hop too (RFC 9110 7.6.1); removed once the
        # head is complete, since they may come before or after the Connection header.
        extra = [t for t in connection_tokens(value) if t not in _CONNECTION_OPTIONS]
        if extra:
            p._conn_tokens = (p._conn_tokens or []) + extra
    elif kind == _H_PROXY_CONNECTION:
        p._connection_seen = True  # (not forwarded: hop-by-hop)
    elif kind == _H_PEER:
        # Peer metadata (service;version) from the calling sidecar; trusted only over mTLS.
        if p.peer_identity is not None:
            p.peer_version = value.decode("latin-1").partition(";")[2] or "unknown"
    elif kind == _H_TIMEOUT:
        if p.listener.reads_timeout_header:  # (else dropped unread: see Listener)
            try:
                p._timeout_override = max(0.0, float(value) / 1000.0)
            except ValueError:
                raise Reject("invalid_header") from None
    elif kind == _H_XFCC:
        # Kept only from an mTLS peer the inbound listener trusts to have set it (a gateway);
        # _head_tail appends our element. From anyone else it is dropped like the others.
        trusted = p.listener.keeps_xfcc(p.peer_identity, p.peer_gateway_cert)
        if trusted and (value := value.strip()):
            p._xfcc_kept = value if p._xfcc_kept is None else p._xfcc_kept + b"," + value
    # _H_CONNECTION and _H_PROXY_CONNECTION: hop-by-hop, not forwarded


def exchange_from_head(p: DownstreamProtocol) -> Exchange:
    """The complete head as an Exchange: method, normalised target, authority, headers."""
    p._in_head = False
    parser = p.parser
    method = parser.get_method()
    if method == b"CONNECT":
        return _connect_exchange(p)
    url = p._url
    if url[:1] == b"/":
        # Origin-form, the common case: split_target's first branch, inline (a call less).
        text = url.decode("latin-1")
        path, _, query = text.partition("?")
        if "#" in text:  # (a str test: see the bytes `in` note below)
            path = path.split("#", 1)[0]
        authority = None
    else:
        text = ""
        try:
            path, query, authority = split_target(url)
        except ValueError:
            raise Reject("bad_request") from None
    keep_alive = parser.should_keep_alive()
    # llhttp keeps a request other than HTTP/1.1 alive only when a Connection (or
    # Proxy-Connection) header says keep-alive: without one, keep-alive means HTTP/1.1, and
    # the version string, which httptools formats on each call (~1,500 instructions), is
    # not needed.
    http10 = False
    if not keep_alive or p._connection_seen:
        version = parser.get_http_version()
        if version != "1.1":
            if version != "1.0":
                raise Reject("version_not_supported")  # HTTP/0.9, HTTP/2.0 in HTTP/1 syntax
            http10 = True
    if authority is None:
        if p._host is None:
            if p.tunnel_host is not None:  # in a CONNECT tunnel: the CONNECT's authority
                authority = p.tunnel_host.decode("latin-1")
                _host_from_target(p, authority)
            elif not http10:
                raise Reject("bad_request")  # HTTP/1.1 requires Host
            else:
                authority = ""
        else:
            authority = p._host.decode("latin-1")
    elif p._host is None or p._host.decode("latin-1") != authority:
        _host_from_target(p, authority)
    if authority not in KNOWN_AUTHORITIES and not valid_authority(authority):
        authority = _trimmed_host(p, authority)  # else not a host and a port: 400
    sent_path = path
    if ("%" in path or "//" in path or "/." in path or "\\" in path) and path != "*":
        path = normalize_path(path)  # the common, already-normal path skips the call
    # The target sent upstream: the client's own bytes when already origin-form and normal
    # (the common case), else rebuilt from the normalised path. (`#` is looked for in the
    # decoded text: CPython's bytes `in` first tries the operand as an integer and raises
    # and clears a TypeError, ~2k instructions; latin-1 maps byte for byte.)
    if path is not sent_path or not text or "#" in text:
        url = (f"{path}?{query}" if query else path).encode("latin-1")
    keep_alive = keep_alive and not p.draining
    if p._special:  # a header of a special kind came (on_header): the general path
        if p._conn_tokens:
            drop = p._conn_tokens
            p._headers = [h for h in p._headers if h[0].lower() not in drop]
            # Gone as hop-by-hop, the proxy's own are added as when none came: a client
            # cannot strip the request id (or keep its x-forwarded-for) this way.
            if b"x-request-id" in drop:
                p._has_request_id = False
            if b"x-forwarded-for" in drop:
                p._xff = None
        # llhttp flags an upgrade (other than CONNECT's) only when an Upgrade header came
        upgrade = p._upgrade_seen and parser.should_upgrade()
        if upgrade and p._upgrade_value is None:
            # An upgrade not offered: the parser stopped after this head, so the connection
            # ends with this response.
            upgrade = keep_alive = False
        elif upgrade:
            # The parser stopped after this head too: unless a 101 makes the connection a
            # tunnel, its answer ends it, and says so (`connection: close`).
            keep_alive = False
        tail = _head_tail(p, upgrade)
        ex = Exchange(
            p, method, url, path, query, authority, p._headers, tail, p._chunked, keep_alive,
            http10, upgrade, p._expect_continue and not http10, p.head_started,
        )
        ex.timeout_override = p._timeout_override
        return ex
    # None came: no XFF, request id, framing or upgrade of the client's to carry (_head_tail
    # without its tests, and the id line popped from the batch here).
    if p.xfcc_line:
        tail = _head_tail(p, False)
    else:
        tail = [p.xff_line, p.listener.forwarded_proto_line,
                _id_lines.pop() if _id_lines else request_id_line()]
    return Exchange(p, method, url, path, query, authority, p._headers, tail, False,
                    keep_alive, http10, False, False, p.head_started)


def _connect_exchange(p: DownstreamProtocol) -> Exchange:
    """`CONNECT host:port`: into the mesh (proxy.meshtunnel) when the host is a mesh service,
    else a byte tunnel to a host outside the mesh, if an ExternalService or ALLOW_ANY allows."""
    from proxy import meshtunnel

    authority = p._url.decode("latin-1")
    if not valid_authority(authority):
        raise Reject("bad_request")
    into_mesh = meshtunnel.connect_exchange(p, authority)
    if into_mesh is not None:
        return into_mesh
    if p.listener.router.egress is None:
        raise Reject("method_not_allowed")
    # No keep-alive: once the tunnel is up the connection carries the tunnel's bytes only,
    # and if it cannot be made the answer ends the connection.
    return Exchange(p, b"CONNECT", p._url, "", "", authority, p._headers, [], False, False,
                    p.parser.get_http_version() == "1.0", False, False, p.head_started)


def _host_from_target(p: DownstreamProtocol, authority: str) -> None:
    """Absolute-form (`GET http://reviews/x`, an HTTP_PROXY client): the request goes where the
    target says, so the upstream gets that as its Host too, in place of a different or missing
    one (RFC 9112 3.2.2: a proxy ignores the received Host and replaces it)."""
    host = authority.encode("latin-1")
    headers = [h for h in p._headers if h[0].lower() != b"host"]
    headers.insert(0, (b"Host", host))
    p._headers = headers
    p._host = host


def _trimmed_host(p: DownstreamProtocol, authority: str) -> str:
    """A Host that is a host and a port once its trailing whitespace is gone (llhttp drops
    only the leading one; RFC 9110 5.5 makes neither part of the value), as the one routed
    and sent on; anything else is refused. Only a Host that failed the check gets here."""
    host = p._host
    trimmed = authority.rstrip(" \t")
    if (host is None or trimmed == authority or host.decode("latin-1") != authority
            or not valid_authority(trimmed)):
        raise Reject("bad_request")  # not a host and a port: routed by no rule, sent nowhere
    value = trimmed.encode("latin-1")
    p._headers = [(n, value) if v is host else (n, v) for n, v in p._headers]
    p._host = value
    return trimmed


def _head_tail(p: DownstreamProtocol, upgrade: bool) -> list[bytes]:
    """Header lines the proxy adds: forwarding, request id, XFCC, framing (the peer metadata
    is added per upstream connection, by Exchange._upstream_head)."""
    tail = [
        b"x-forwarded-for: " + p._xff + b", " + p.client_ip + b"\r\n" if p._xff
        else p.xff_line,
        p.listener.forwarded_proto_line,
    ]
    if not p._has_request_id:
        tail.append(request_id_line())
    if p.xfcc_line:  # (any the client sent was dropped, or kept from a trusted peer)
        if p._xfcc_kept is None:
            tail.append(p.xfcc_line)
        else:
            tail.append(appended_xfcc(p._xfcc_kept, p.xfcc_line))
    if p._chunked:
        tail.append(b"transfer-encoding: chunked\r\n")
    if upgrade and p._upgrade_value is not None:
        tail.append(b"connection: upgrade\r\nupgrade: " + p._upgrade_value + b"\r\n")
    return tail

"""A client's HTTP/2 request HEADERS as an `H2Exchange`, or the reason word it is refused with.

`proxy.h2headers` has checked the block (pseudo-headers, no connection-specific headers,
lower-case names, no CR, LF or NUL; a `:method`, a `:path` but for CONNECT, one authority);
here are the proxy's own rules, as `proxy.requesthead` has them for HTTP/1.1: header size and
path length, path normalisation, the headers only this proxy may set, and the ones it adds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.h2exchange import H2Exchange
from proxy.headers import (
    IDENTITY_HEADERS,
    KNOWN_AUTHORITIES,
    XFCC,
    appended_xfcc,
    normalize_path,
    request_id_line,
    split_target,
    valid_authority,
)
from proxy.requesthead import _H_DROP, _H_PEER, _H_REQUEST_ID, _H_TIMEOUT, _H_XFCC, _H_XFF, _SPECIAL

if TYPE_CHECKING:
    from proxy.h2downstream import H2Stream
    from proxy.h2flow import Headers

# Request headers not forwarded: hop-by-hop ones HTTP/2 lets through (h2 itself refuses the
# connection-specific ones), headers only this proxy may set, and the caller's identity claims
# (XFCC itself is read below: kept from a trusted peer).
_DROP = frozenset({b"proxy-authorization", b"x-forwarded-proto", b"keep-alive",
                   b"proxy-connection", b"expect", *IDENTITY_HEADERS - {XFCC}})
# requesthead's table, and `content-length`: what the request's DATA frames must add up to
_H_LENGTH = -1
_H2_SPECIAL = {**_SPECIAL, b"content-length": _H_LENGTH}


def exchange_from_headers(stream: H2Stream, headers: Headers, now: float,
                          ended: bool) -> H2Exchange | str:
    """A client's request HEADERS as an H2Exchange, or the reason word it is refused with;
    `ended`: the HEADERS frame ended the stream (no body follows)."""
    listener = stream.listener
    budget = listener.limits.max_header_bytes
    method = path_bytes = scheme = authority = host = None
    xff: bytes | None = None
    xfcc: bytes | None = None  # a trusted peer's (see requesthead's _H_XFCC)
    has_request_id = False
    timeout_override: float | None = None
    grpc = False
    length: bytes | None = None
    kept: Headers = []
    for header in headers:
        # (the field itself is kept, not a new tuple: one received never-indexed is an
        # hpack NeverIndexedHeaderTuple, and goes on never-indexed, RFC 7541 7.1.3)
        name, value = header
        budget -= len(name) + len(value) + 4
        if name[:1] == b":":
            if name == b":method":
                method = value
            elif name == b":path":
                path_bytes = value
            elif name == b":scheme":
                scheme = value
            elif name == b":authority":
                authority = value
            continue
        if name == b"host":
            host = value
            continue
        if name in _DROP:
            continue
        if name == b"te":
            kept.append(header)  # `trailers`, gRPC's (h2 lets no other value in)
            continue
        kind = _H2_SPECIAL.get(name)
        if kind is None or kind == _H_REQUEST_ID:
            if name == b"content-type" and value.startswith(b"application/grpc"):
                grpc = True
            has_request_id = has_request_id or kind == _H_REQUEST_ID
            kept.append(header)
        elif kind == _H_XFF:
            xff = value if xff is None else xff + b", " + value
        elif kind == _H_PEER:
            if stream.peer_identity is not None:
                stream.peer_version = value.decode("latin-1").partition(";")[2] or "unknown"
        elif kind == _H_TIMEOUT:
            if listener.reads_timeout_header:  # (else dropped unread: see Listener)
                try:
                    timeout_override = max(0.0, float(value) / 1000.0)
                except ValueError:
                    return "invalid_header"
        elif kind == _H_XFCC:
            if (listener.keeps_xfcc(stream.peer_identity, stream.peer_gateway_cert)
                    and (value := value.strip())):
                xfcc = value if xfcc is None else xfcc + b"," + value
        elif kind == _H_LENGTH:
            length = value
            kept.append(header)
        elif kind != _H_DROP:
            kept.append(header)
    if budget < 0:
        return "headers_too_large"
    if ended and length is not None and int(length):
        # RFC 9113 8.1.1: malformed, a body announced and none sent (h2 checks DATA frames
        # only). Forwarded, an HTTP/1.1 app would read the next request on its connection
        # as this one's body.
        return "bad_request"
    if method == b"CONNECT":
        return "method_not_allowed"  # (extended CONNECT, RFC 8441, is not offered)
    if authority is None:
        authority = host
    # h2headers.check refused a block without these, or with two authorities that differ
    # (Unroutable: answered 400 before this), so they are not checked again
    assert method is not None and authority is not None and path_bytes is not None
    if method.upper() != method:
        # `delete` is not DELETE (methods are case-sensitive) yet frameworks upper-case it:
        # it would pass a rule on DELETE and run the DELETE handler. As HTTP/1.1's parser does
        # for the same request line, it is refused.
        return "bad_request"
    if len(path_bytes) > listener.limits.max_request_line:
        return "uri_too_long"
    text_authority = authority.decode("latin-1")
    if text_authority not in KNOWN_AUTHORITIES and not valid_authority(text_authority):
        return "bad_request"  # (as requesthead: not a host and a port)
    try:
        path, query, _ = split_target(path_bytes)
    except ValueError:
        return "bad_request"
    sent_path = path
    if ("%" in path or "//" in path or "/." in path or "\\" in path) and path != "*":
        path = normalize_path(path)
    target = path_bytes
    if path is not sent_path or target[:1] != b"/" or target.find(b"#") >= 0:
        target = (f"{path}?{query}" if query else path).encode("latin-1")
    kept.insert(0, (b"host", authority))  # routing and header edits see the authority as Host
    tail = [b"x-forwarded-for: " + (xff + b", " + stream.client_ip if xff else stream.client_ip)
            + b"\r\n", listener.forwarded_proto_line]
    if not has_request_id:
        tail.append(request_id_line())
    if stream.xfcc_line:
        tail.append(stream.xfcc_line if xfcc is None else appended_xfcc(xfcc, stream.xfcc_line))
    ex = H2Exchange(stream, method, target, path, query, text_authority, kept,
                    tail, listener.h2_scheme or scheme or b"http", grpc, now)
    ex.timeout_override = timeout_override
    return ex

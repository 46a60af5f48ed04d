"""Received HTTP/2 header blocks checked in one pass: h2's inbound validation, cheaper.

h2 validates a received block with a chain of eight generators, one of which walks every byte
of every name and value in Python: about a fifth of the proxy's instructions per HTTP/2
request. The connections turn that off (`proxy.h2guard.configuration`) and run `check` on each
request, response and trailers block instead, raising h2's `ProtocolError` from inside
`receive_data` as h2 did; `proxy.h2malformed` makes that a stream error (RST_STREAM
PROTOCOL_ERROR, RFC 9113 8.1.1), where h2 ended the connection. What is checked is h2's
list (RFC 9113 8.2 and 8.3): names non-empty, lower case, no control, space, DEL, high or
(after the first byte) colon bytes; values without NUL, CR or LF and without surrounding
whitespace; no connection-specific header, `te` only
`trailers`; pseudo-headers known, once each, first, of the block's kind, the mandatory ones
present, none in trailers; a request's `:path` not empty, `:authority` and `host` not both
differing, one `host`. Cookies split over several fields are joined, last (h2's inbound
normalisation, also turned off). Two differences: h2 moved cookies last before checking the
order, so it let a `cookie` field ahead of a pseudo-header through; RFC 9113 8.3 makes that
malformed, and so does `check`. And h2 let any `:status` through (`abc`, `2_00`, `2000`);
`check` wants three digits (RFC 9110 15), as nghttp2 does.
"""

from __future__ import annotations

import re

from h2.exceptions import ProtocolError
from hpack import NeverIndexedHeaderTuple

REQUEST, RESPONSE, TRAILERS = 0, 1, 2

_NAME = re.compile(rb"[!-9;-@\[-~]+")  # 0x21-0x7e but ':' and A-Z
_BAD_VALUE = re.compile(rb"[\0\r\n]|\A[ \t]|[ \t]\Z")
_CONNECTION = frozenset({b"connection", b"proxy-connection", b"keep-alive",
                         b"transfer-encoding", b"upgrade"})
_PSEUDO: tuple[set[bytes], ...] = ({b":method", b":scheme", b":authority", b":path", b":protocol"},
           {b":status"}, set())
_GOOD_NAMES: set[bytes] = set()  # names already found valid: most repeat on every request
_MAX_GOOD_NAMES = 4096


class Unroutable(ProtocolError):
    """A request naming no authority, or two that differ (RFC 9113 8.3.1): malformed, but
    otherwise checked whole, so it is answered `400 bad_request` on its stream (as nginx
    does) rather than reset; `head`: a HEAD request (answered without a body)."""

    def __init__(self, message: str, method: bytes) -> None:
        super().__init__(message)
        self.head = method == b"HEAD"


def check(headers: list, kind: int) -> list:  # type: ignore[type-arg]
    """`headers` (or, where cookies were split, a copy with them joined), else ProtocolError."""
    seen: set[bytes] = set()
    regular = False
    cookies = 0
    host = authority = method = None
    good = _GOOD_NAMES
    for name, value in headers:
        if name not in good:
            _check_name(name)
        if value and _BAD_VALUE.search(value) is not None:
            raise ProtocolError(f"Illegal character or surrounding whitespace in header value: "
                                f"{value!r}")
        if name[0] == 0x3A:  # b":"
            if regular:
                raise ProtocolError(f"Received pseudo-header field out of sequence: {name!r}")
            if name not in _PSEUDO[kind]:
                raise ProtocolError(f"Received pseudo-header field {name!r} not allowed here")
            if name in seen:
                raise ProtocolError(f"Received duplicate pseudo-header field {name!r}")
            seen.add(name)
            if name == b":method":
                method = value
            elif name == b":authority":
                authority = value
            elif name == b":path" and not value:
                raise ProtocolError("An empty :path header is forbidden")
            elif name == b":status" and (len(value) != 3 or not value.isdigit()):
                # RFC 9110 15: three digits (h2 let `abc`, `2_00`, `2000` through)
                raise ProtocolError(f"Invalid :status: {value!r}")
            continue
        regular = True
        if name in _CONNECTION:
            raise ProtocolError(f"Connection-specific header field present: {name!r}.")
        if name == b"te" and value.lower() != b"trailers":
            raise ProtocolError(f"Invalid value for TE header: {value!r}")
        if name == b"cookie":
            cookies += 1
        elif name == b"host" and kind == REQUEST:
            if host is not None:
                raise ProtocolError("Request header block has multiple Host headers.")
            host = value
    if kind == REQUEST:
        _check_request(seen, method, authority, host)
    elif kind == RESPONSE and b":status" not in seen:
        raise ProtocolError("Header block missing mandatory b':status' header")
    if cookies:
        return _join_cookies(headers)
    return headers


def _check_name(name: bytes) -> None:
    body = name[1:] if name[:1] == b":" else name
    if not body or _NAME.fullmatch(body) is None:
        raise ProtocolError(f"Illegal header name: {name!r}")
    if len(_GOOD_NAMES) < _MAX_GOOD_NAMES:
        _GOOD_NAMES.add(name)


def _check_request(seen: set[bytes], method: bytes | None, authority: bytes | None,
                   host: bytes | None) -> None:
    if method is None:
        raise ProtocolError("Header block missing mandatory b':method' header")
    connect = method == b"CONNECT"
    if connect and b":protocol" not in seen:
        if b":scheme" in seen or b":path" in seen:
            raise ProtocolError("Ordinary CONNECT MUST NOT include :scheme or :path")
    elif b":scheme" not in seen or b":path" not in seen:
        raise ProtocolError("Header block missing mandatory b':scheme' or b':path' header")
    if not connect and b":protocol" in seen:
        raise ProtocolError("Encountered connect-request-only headers {b':protocol'}")
    if authority is None and host is None:
        raise Unroutable("Request header block does not have an :authority or Host header.",
                         method)
    if authority is not None and host is not None and authority != host:
        raise Unroutable(f"Request header block has mismatched :authority and Host headers: "
                         f"{authority!r} / {host!r}", method)


def _join_cookies(headers: list) -> list:  # type: ignore[type-arg]
    """RFC 9113 8.2.3: cookie fields joined into one, placed last (as h2 does)."""
    out = [h for h in headers if h[0] != b"cookie"]
    out.append(NeverIndexedHeaderTuple(b"cookie", b"; ".join(
        h[1] for h in headers if h[0] == b"cookie")))
    return out

"""Header rules of a forwarding proxy: hop-by-hop stripping, path normalisation, request ids."""

from __future__ import annotations

import os
import re
import struct

# RFC 9110 §7.6.1 connection-specific fields, never forwarded (lower-case bytes).
HOP_BY_HOP: frozenset[bytes] = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
    b"transfer-encoding", b"upgrade", b"proxy-authorization", b"proxy-authenticate",
})

def spellings(name: bytes) -> set[bytes]:
    """`name` with each `-` as `-` or `_`: WSGI/CGI servers (HTTP_X_FORWARDED_CLIENT_CERT)
    and some frameworks treat both the same, so a forged `x_forwarded_client_cert` would
    reach the app as the sidecar's header."""
    first, *rest = name.split(b"-")
    out = {first}
    for part in rest:
        out = {done + sep + part for done in out for sep in (b"-", b"_")}
    return out


# Identity headers only a sidecar may set; anything a client or peer sent is dropped, in every
# spelling an app could read as the same header (XFCC itself is kept from a trusted peer).
XFCC = b"x-forwarded-client-cert"
IDENTITY_HEADERS: frozenset[bytes] = frozenset(spellings(XFCC))
_XFCC_PREFIX = XFCC + b": "


def appended_xfcc(kept: bytes, own_line: bytes) -> bytes:
    """Envoy's APPEND_FORWARD: the XFCC a trusted peer sent, then, after a comma, this
    sidecar's element; ``own_line`` is its whole `x-forwarded-client-cert: By=..` line."""
    cut = len(_XFCC_PREFIX)
    return own_line[:cut] + kept + b"," + own_line[cut:]


# uuid4's version (4) and variant (8-b) nibbles, set on every id of a batch by translate
_VERSION_BYTE = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT_BYTE = bytes((b & 0x3F) | 0x80 for b in range(256))
_ID_LINE = b"x-request-id: %s-%s-%s-%s-%s\r\n"
_ID_LINE_SIZE = len(_ID_LINE % ((b"",) * 5)) + 32  # 52


def _request_id_batch(n: int = 256) -> list[bytes]:
    """n `x-request-id` lines with random UUIDv4s, from one urandom call; amortised, a line
    costs a list pop (made whole here: no concatenation per request). The batch is cut,
    formatted and split by C calls (translate, struct, one `%`), not a Python loop per id."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = raw[6::16].translate(_VERSION_BYTE)
    raw[8::16] = raw[8::16].translate(_VARIANT_BYTE)
    pieces = struct.unpack("8s4s4s4s12s" * n, raw.hex().encode())
    text = (_ID_LINE * n) % pieces
    size = _ID_LINE_SIZE
    return [text[i:i + size] for i in range(0, size * n, size)]


_id_lines: list[bytes] = []


def request_id_line() -> bytes:
    """An `x-request-id: <random UUIDv4>` header line (CRLF included)."""
    if not _id_lines:
        _id_lines.extend(_request_id_batch())
    return _id_lines.pop()


def connection_tokens(value: bytes) -> list[bytes]:
    """The lower-case tokens of a Connection header value."""
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _decode_escape(m: re.Match[str]) -> str:
    char = chr(int(m.group(1), 16))
    if char in _UNRESERVED:
        return char
    if char in "/\\":
        return "/"
    return m.group(0)


def normalize_path(path: str) -> str:
    r"""RFC 3986 normalisation used before routing and authorization.

    Decodes percent-encoded unreserved characters (RFC 3986 6.2.2.2: letters, digits, `-`,
    `.`, `_`, `~`) and slashes (`%2F`, and `%5C` as `/`), turns backslashes into slashes (as
    Envoy's normalize_path: many servers treat `\` as a separator), merges repeated slashes
    and removes dot segments, so `/public/..%2Fadmin`, `//admin`, `/public\..\admin` and
    `/%61dmin` (which the app decodes to `/admin`) cannot slip past a prefix rule for
    `/admin`. Other escapes stay as sent: decoding them (`%3F`, `%20`, `%25`) would change the
    request target the app receives.
    """
    if "%" not in path and "//" not in path and "/." not in path and "\\" not in path:
        return path  # already normal: the common case costs four scans
    if "%" in path:
        path = _ESCAPE.sub(_decode_escape, path)  # one pass: `%2561` stays `%2561`
    if "\\" in path:
        path = path.replace("\\", "/")
    segments: list[str] = []
    for seg in path.split("/"):
        if seg == "..":
            if segments:
                segments.pop()
        elif seg and seg != ".":
            segments.append(seg)
    trailing = path.endswith(("/", "/.", "/..")) and bool(segments)
    return "/" + "/".join(segments) + ("/" if trailing else "")


def split_target(target: bytes) -> tuple[str, str, str | None]:
    """Split a request target into (path, query, authority-or-None) for origin and absolute form."""
    authority: str | None = None
    if target[:1] != b"/":
        if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
            rest = target.split(b"://", 1)[1]
            slash = rest.find(b"/")
            query_at = rest.find(b"?")
            cut = min(i for i in (slash, query_at, len(rest)) if i >= 0)
            authority = rest[:cut].decode("latin-1")
            target = rest[cut:] or b"/"
            if target[:1] == b"?":
                target = b"/" + target
        elif target == b"*":
            return "*", "", None
        else:
            raise ValueError("request target is neither origin-form nor absolute-form")
    text = target.decode("latin-1")
    path, _, query = text.partition("?")
    if "#" in path:
        path = path.split("#", 1)[0]
    return path, query, authority


# RFC 9112 3.2 answers 400 to a Host that is not RFC 3986's `host [ ":" port ]`: a reg-name
# or IPv4 address (unreserved, pct-encoded, sub-delims; never `@`, `/`, `?`, `#`, a space),
# or an IP literal in brackets. Userinfo (`a@b`) is refused with it, as RFC 9110 4.2.4 asks.
_AUTHORITY = re.compile(r"(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
                        r"|\[[0-9A-Za-z\-._~!$&'()*+,;=:%]+\])(?::[0-9]{0,5})?")
# Authorities already found valid: most requests name one of a few hosts, so they cost a set
# lookup. Bounded: a client choosing Host values must not grow it.
KNOWN_AUTHORITIES: set[str] = set()
_KNOWN_MAX = 256


def valid_authority(authority: str) -> bool:
    """Whether `authority` (a Host value, an absolute-form target's) is a host and a port."""
    if authority in KNOWN_AUTHORITIES:
        return True
    if _AUTHORITY.fullmatch(authority) is None:
        return False
    if len(KNOWN_AUTHORITIES) < _KNOWN_MAX:
        KNOWN_AUTHORITIES.add(authority)
    return True


def service_from_authority(authority: str) -> str:
    """`reviews:9080` / `reviews.default.svc.cluster.local` -> `reviews` (the mesh service name)."""
    host = authority
    if host.startswith("["):  # IPv6 literal: keep as is, minus the port
        return host.split("]", 1)[0] + "]"
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host.lower()

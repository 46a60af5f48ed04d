"""Cookie affinity (consistentHash.httpCookie): the key a request carries in its cookie, and
the `Set-Cookie` that sends the client back to the endpoint that answered.

Built once per destination (``CookieAffinity``); a request pays for it only when its
destination hashes by a cookie. Envoy's rules for the key: the cookie's value when the request
has it (quotes removed); without it, no key (any endpoint) unless ``ttl`` is set, in which
case the proxy keys the request by its client connection (concurrent requests of one
connection agree, as Envoy's generated value does) and the answer sets the cookie. The value
set names the endpoint that answered (``proxy.policy.sticky.endpoint_token``), so that the
next requests go to it whatever other endpoints join or leave; the answer of an endpoint that
the request's cookie does not name (no cookie, a stale one, a retry's other endpoint) sets it
again. Local replies (a timeout, `no_healthy_upstream`...) set nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from proxy.policy.sticky import endpoint_token

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.layers import HeaderEditor

_QUOTE = b'"'[0]


def request_cookie(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The value of the first cookie called ``name`` (case-sensitive, RFC 6265) in every
    `Cookie` header of the request (an HTTP/1.1 client may send several; HTTP/2's split ones
    are joined already), spaces around it and one pair of double quotes removed; None when
    there is none or it is empty. Any byte is taken as it is (latin-1): a value is only a key."""
    for n, v in headers:
        if len(n) == 6 and n.lower() == b"cookie":
            for pair in v.split(b";"):
                key, eq, value = pair.partition(b"=")
                if eq and key.strip(b" \t") == name:
                    value = value.strip(b" \t")
                    if len(value) >= 2 and value[0] == _QUOTE and value[-1] == _QUOTE:
                        value = value[1:-1]
                    return value.decode("latin-1") if value else None
    return None


def set_cookie_value(name: str, value: str, path: str | None, ttl: float | None) -> bytes:
    """`name=value; Path=path; Max-Age=ttl; HttpOnly`, as Envoy writes it: no Path without
    one, no Max-Age for a ttl of 0 (a session cookie, gone when the browser closes)."""
    attributes = f"; Path={path}" if path else ""
    if ttl:
        attributes += f"; Max-Age={math.ceil(ttl)}"
    return f"{name}={value}{attributes}; HttpOnly".encode("latin-1")


class CookieAffinity:
    """One destination's cookie: its name, and per endpoint (pool) its token and the
    `Set-Cookie` value naming it. ``key`` is the destination's hash key (Backend.hash_key)."""

    __slots__ = ("by_token", "generate", "is_available", "name", "set_cookie", "tokens")

    def __init__(self, spec: Any, pools: Iterable[Any], name_of: Callable[[Any], str],
                 is_available: Callable[[Any], bool] | None = None) -> None:
        self.name = spec.name.encode("latin-1")
        self.generate = spec.ttl is not None  # without a ttl the proxy never sets the cookie
        self.tokens: dict[Any, str] = {p: endpoint_token(name_of(p)) for p in pools}
        # The endpoints by the token naming them (proxy.policy.sticky.StickyBalancer's too)
        self.by_token: Mapping[str, Any] = {token: p for p, token in self.tokens.items()}
        self.is_available = is_available  # (not ejected: the balancer's predicate)
        self.set_cookie: dict[Any, bytes] = {
            p: set_cookie_value(spec.name, token, spec.path, spec.ttl)
            for p, token in self.tokens.items()}

    def key(self, ex: Exchange) -> str | None:
        """The request's hash key (None: any endpoint); with a ttl, its answer will set the
        cookie if the endpoint answering is not the one the cookie names.

        A request whose cookie names an endpoint that serves goes there (StickyBalancer):
        nothing to set, so no edits, and its answer's head takes the common path. Edits are
        installed when the cookie is absent or names no serving endpoint, and on a second
        pick (a retry, a connect failover: ``ex.pool`` is the endpoint tried)."""
        value = request_cookie(ex.headers, self.name)
        if self.generate:
            if value is None or ex.pool is not None or not self._serves(value):
                edits = ex.response_edits
                if not isinstance(edits, SetCookie):  # (installed by an earlier pick)
                    ex.response_edits = SetCookie(edits, ex, self, value)
            if value is None:
                return connection_key(ex)
        return value

    def _serves(self, token: str) -> bool:
        """Whether ``token`` names an endpoint the balancer will pick for it now."""
        named = self.by_token.get(token)
        return named is not None and (self.is_available is None or self.is_available(named))


def connection_key(ex: Exchange) -> str:
    """One key per client connection, as Envoy's generated value (a hash of the connection's
    addresses): the client's address and port (the object's id alone would come back for the
    next connection, its memory reused, and send one-shot clients to one endpoint)."""
    conn = ex.downstream.session if ex.http2 else ex.downstream  # type: ignore[attr-defined]
    transport = conn.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"connection:{peer}:{id(conn):x}"


class SetCookie:
    """A response's header edits: the rule's own (``base``), then, when an endpoint answered
    and the request's cookie (``sent``) does not name it, `Set-Cookie` naming it.

    The endpoint is the one that answered, read when the head is made (a retry, a failover or
    the breaker's queue may have moved the request); an exchange without an upstream
    connection then is answering itself (a local reply) and sets no cookie. The exchange is
    let go of once the head is made: no reference cycle outlives the response."""

    __slots__ = ("affinity", "base", "ex", "sent")

    def __init__(self, base: HeaderEditor | None, ex: Exchange, affinity: CookieAffinity,
                 sent: str | None) -> None:
        self.base = base
        self.ex: Exchange | None = ex
        self.affinity = affinity
        self.sent = sent

    def _cookie(self) -> bytes | None:
        ex, self.ex = self.ex, None
        if ex is None or ex.conn is None:
            return None
        affinity = self.affinity
        pool = ex.pool
        if affinity.tokens.get(pool) == self.sent:
            return None
        return affinity.set_cookie.get(pool)

    def apply(self, lines: list[bytes]) -> list[bytes]:
        """HTTP/1.1: serialized header lines (the status line first)."""
        out = self.base.apply(lines) if self.base is not None else list(lines)
        cookie = self._cookie()
        if cookie is not None:
            out.append(b"set-cookie: " + cookie + b"\r\n")
        return out

    def edit_pairs(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """(name, value) pairs: an HTTP/2 response, or a local reply."""
        out = self.base.edit_pairs(headers) if self.base is not None else list(headers)
        cookie = self._cookie()
        if cookie is not None:
            out.append((b"set-cookie", cookie))
        return out

"""Cookie affinity's balancer: a key naming an endpoint goes to it, any other key round the ring.

The cookie a proxy sets (consistentHash.httpCookie with a ttl) names the endpoint that answered
by a token, ``endpoint_token`` of its address, the same in every process: any sidecar or
gateway replica sends the client back to it, and endpoints joining or leaving the ring do not
move it (a hashed key would move with about 1/n of the others). A token naming no endpoint
that may serve now (gone, ejected, excluded by a retry), and any other key, is hashed onto the
ring as with the other hash keys, so every proxy still agrees where it goes.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, Generic, TypeVar

from proxy.policy.balancer import ring_hash

E = TypeVar("E")


def endpoint_token(name: str) -> str:
    """The cookie value naming the endpoint called ``name`` (its address): 16 hex digits, an
    RFC 6265 cookie-octet string, that does not spell out the address."""
    return f"{ring_hash('ami-endpoint:' + name):016x}"


class StickyBalancer(Generic[E]):
    """``inner`` (a ring, or a locality balancer of rings), with the endpoints a key may name
    by their token (``by_token``) picked first while they are available."""

    __slots__ = ("by_token", "inner", "is_available")

    def __init__(self, inner: Any, by_token: Mapping[str, E],
                 is_available: Callable[[E], bool] | None = None) -> None:
        self.inner = inner
        self.by_token = by_token
        self.is_available = is_available

    def pick(self, endpoints: Sequence[E], exclude: Container[E] | None = None) -> E | None:
        """No key: the inner balancer's pick."""
        picked: E | None = self.inner.pick(endpoints, exclude)
        return picked

    def pick_by_key(self, key: str, exclude: Container[E] | None = None) -> E | None:
        """The endpoint ``key`` names, if it may serve; else the ring's owner of ``key``."""
        named = self.by_token.get(key)
        if named is not None and (exclude is None or named not in exclude) and (
                self.is_available is None or self.is_available(named)):
            return named
        picked: E | None = self.inner.pick_by_key(key, exclude)
        return picked

"""The JWK Sets of RequestAuthentication ``jwksUri``s, fetched by the control plane (as istiod).

Sidecars never fetch keys: each snapshot carries them inline. A URI is fetched as soon as a
resource names it (or a resource naming it changes: re-applying a RequestAuthentication is how
to refresh at once), then every ``refresh`` seconds (``meshctl serve --jwks-refresh``, 20 min
by default). A failed fetch (unreachable, not 200, not a JWK Set with a usable key) keeps the
last good keys, logs a warning and counts in ``ami_controlplane_jwks_fetch_failures_total``;
until a first fetch succeeds the issuer's set is empty, so its tokens are refused (401) while
requests without a token still pass. New keys mark every proxy for a reconcile pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from meshctl.api.authn import MAX_JWKS_BYTES, jwk_algorithms, load_key

log = logging.getLogger("ami.controlplane.jwks")

DEFAULT_REFRESH = 1200.0  # seconds, as istiod's default JWKS refresh interval
EMPTY_JWKS = '{"keys":[]}'
Fetch = Callable[[str], Awaitable[bytes]]


class JwksFetchError(Exception):
    """A JWKS URI did not give a usable JWK Set."""


def usable_jwks(body: bytes) -> str:
    """The JWK Set in ``body`` with only the keys Ami can verify with, as canonical JSON
    (equal keys give equal text, so an unchanged set changes no snapshot); raises
    JwksFetchError when nothing usable is left. Keys of other kinds (an encryption key, an
    HMAC secret) are skipped, as a provider's set often holds some."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise JwksFetchError(f"not JSON: {err}") from None
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise JwksFetchError('not a JWK Set (a JSON object with a "keys" list)')
    kept = []
    for key in data["keys"]:
        if not isinstance(key, Mapping):
            continue
        try:
            load_key(key, jwk_algorithms(key)[0])
        except ValueError:
            continue
        kept.append(key)
    if not kept:
        raise JwksFetchError("the JWK Set has no usable signing key (RSA, EC or OKP)")
    return json.dumps({"keys": kept}, sort_keys=True, separators=(",", ":"))


async def http_fetch(uri: str, timeout: float = 10.0) -> bytes:
    """GET ``uri``: the body of a 200 answer, at most MAX_JWKS_BYTES."""
    import aiohttp

    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with aiohttp.ClientSession(timeout=client_timeout) as session, \
            session.get(uri, allow_redirects=False,
                        headers={"Accept": "application/json"}) as resp:
        if resp.status != 200:
            raise JwksFetchError(f"HTTP {resp.status}")
        # read(n) gives what has arrived, up to n bytes, not n bytes: read to the end (or
        # just past the cap), else a set sent in several chunks is cut and "not JSON"
        body = bytearray()
        while len(body) <= MAX_JWKS_BYTES:
            chunk = await resp.content.read(MAX_JWKS_BYTES + 1 - len(body))
            if not chunk:
                break
            body += chunk
        if len(body) > MAX_JWKS_BYTES:
            raise JwksFetchError(f"larger than {MAX_JWKS_BYTES} bytes")
        return bytes(body)


class JwksCache:
    """Last good JWK Set per URI; ``run()`` fetches what ``want()`` asked for."""

    def __init__(self, *, refresh: float = DEFAULT_REFRESH, fetch: Fetch | None = None,
                 on_change: Callable[[], None] = lambda: None, counters: Any = None) -> None:
        self.refresh = refresh
        self._fetch = fetch or http_fetch
        self.on_change = on_change
        self.counters = counters  # ReconcileCounters: jwks_fetches, jwks_fetch_failures
        self._keys: dict[str, str] = {}
        self._wanted: dict[str, int] = {}  # URI -> resourceVersion of the newest resource
        self._pending: set[str] = set()
        self._kick = asyncio.Event()
        self.errors: dict[str, str] = {}  # URI -> last failure, cleared by a success

    def jwks(self, uri: str) -> str:
        """The last good JWK Set of ``uri`` (canonical JSON), or an empty set."""
        return self._keys.get(uri, EMPTY_JWKS)

    def status(self) -> dict[str, tuple[bool, str | None]]:
        """Each URI resources name: whether keys are held, and the last fetch error."""
        return {uri: (uri in self._keys, self.errors.get(uri)) for uri in self._wanted}

    def want(self, uris: Mapping[str, int]) -> None:
        """The URIs resources name now, each with the newest resourceVersion naming it: a new
        URI, or one named by a changed resource, is fetched at once; others are forgotten."""
        for uri, version in uris.items():
            if version > self._wanted.get(uri, -1):
                self._pending.add(uri)
            self._wanted[uri] = max(version, self._wanted.get(uri, -1))
        for uri in [u for u in self._wanted if u not in uris]:
            del self._wanted[uri]
            self._keys.pop(uri, None)
            self.errors.pop(uri, None)
        if self._pending:
            self._kick.set()

    async def run(self) -> None:
        """Fetch pending URIs when asked, and every wanted URI every ``refresh`` seconds."""
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self.refresh
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), max(0.0, next_refresh - loop.time()))
            except TimeoutError:
                pass
            self._kick.clear()
            if loop.time() >= next_refresh:
                uris = set(self._wanted)
                next_refresh = loop.time() + self.refresh
            else:
                uris = self._pending & set(self._wanted)
            self._pending.clear()
            if uris:
                await self.fetch_now(sorted(uris))

    async def fetch_now(self, uris: list[str]) -> None:
        """Fetch ``uris`` together; call ``on_change`` once if any set changed."""
        results = await asyncio.gather(*(self._one(u) for u in uris))
        if any(results):
            self.on_change()

    async def _one(self, uri: str) -> bool:
        if self.counters is not None:
            self.counters.jwks_fetches += 1
        try:
            keys = usable_jwks(await self._fetch(uri))
        except Exception as err:  # unreachable, refused, bad body: keep the last good keys
            if self.counters is not None:
                self.counters.jwks_fetch_failures += 1
            text = str(err) or type(err).__name__
            self.errors[uri] = text
            log.warning("JWKS %s: fetch failed (%s); %s", uri, text,
                        "keeping the last good keys" if uri in self._keys
                        else "its issuer's tokens are refused until a fetch succeeds")
            return False
        self.errors.pop(uri, None)
        if uri not in self._wanted or self._keys.get(uri) == keys:
            return False
        self._keys[uri] = keys
        log.info("JWKS %s: %d key(s) loaded", uri, keys.count('"kty"'))
        return True

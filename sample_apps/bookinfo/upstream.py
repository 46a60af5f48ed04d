"""Outbound HTTP for the Bookinfo apps: service URLs, the sidecar proxy, timed JSON GETs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

DEFAULT_SERVICE_PORT = 9080


@dataclass(frozen=True, slots=True)
class ServiceAddress:
    """A mesh service as the app names it; the sidecar resolves the name, not DNS."""

    hostname: str
    port: int = DEFAULT_SERVICE_PORT
    domain: str = ""

    @property
    def base_url(self) -> str:
        suffix = f".{self.domain}" if self.domain else ""
        return f"http://{self.hostname}{suffix}:{self.port}"

    @classmethod
    def from_env(cls, service: str, environ: Mapping[str, str]) -> ServiceAddress:
        """Istio's variables: `<SERVICE>_HOSTNAME`, `<SERVICE>_SERVICE_PORT`, `SERVICES_DOMAIN`."""
        prefix = service.upper()
        return cls(
            hostname=environ.get(f"{prefix}_HOSTNAME", service),
            port=int(environ.get(f"{prefix}_SERVICE_PORT", str(DEFAULT_SERVICE_PORT))),
            domain=environ.get("SERVICES_DOMAIN", ""),
        )


def proxy_from_env(environ: Mapping[str, str]) -> str | None:
    """The sidecar's outbound listener, read directly so `NO_PROXY` cannot bypass the mesh."""
    return environ.get("HTTP_PROXY") or environ.get("http_proxy") or None


@dataclass(frozen=True, slots=True)
class UpstreamResult:
    """One outbound call: `status` is None when no response came (refused, timeout, bad JSON)."""

    status: int | None
    body: Any = None

    @property
    def ok(self) -> bool:
        return self.status == 200


class UpstreamClient:
    """GETs JSON through the sidecar; every failure becomes a result, never an exception."""

    def __init__(self, session: aiohttp.ClientSession, proxy: str | None) -> None:
        self._session = session
        self._proxy = proxy

    async def get_json(
        self, url: str, headers: Mapping[str, str], timeout: float
    ) -> UpstreamResult:
        try:
            async with self._session.get(
                url,
                headers=dict(headers),
                proxy=self._proxy,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                if response.status != 200:
                    return UpstreamResult(response.status)
                return UpstreamResult(200, await response.json(content_type=None))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return UpstreamResult(None)


def upstream_context(
    key: web.AppKey[UpstreamClient], proxy: str | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context that owns the app's client session for its whole life."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        # trust_env stays off: the proxy is passed per request so NO_PROXY is ignored, and the
        # cookie jar is a dummy because cookies are forwarded from the incoming request only.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            app[key] = UpstreamClient(session, proxy)
            yield

    return context

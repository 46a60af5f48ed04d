"""productpage's calls to details, reviews and ratings, with Istio's tries and error texts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from sample_apps.bookinfo.upstream import ServiceAddress, UpstreamClient, UpstreamResult

PRODUCTS: tuple[dict[str, Any], ...] = (
    {
        "id": 0,
        "title": "The Comedy of Errors",
        "descriptionHtml": (
            '<a href="https://en.wikipedia.org/wiki/The_Comedy_of_Errors">Wikipedia Summary</a>: '
            "The Comedy of Errors is one of <b>William Shakespeare's</b> early plays. It is his "
            "shortest and one of his most farcical comedies, with a major part of the humour "
            "coming from slapstick and mistaken identity, in addition to puns and word play."
        ),
    },
)
DEFAULT_DETAILS = ServiceAddress("details")
DEFAULT_REVIEWS = ServiceAddress("reviews")
DEFAULT_RATINGS = ServiceAddress("ratings")


@dataclass(frozen=True, slots=True)
class Upstreams:
    """Where productpage's three upstreams are, and the per-call timeout (Istio: 3 s)."""

    details: ServiceAddress = DEFAULT_DETAILS
    reviews: ServiceAddress = DEFAULT_REVIEWS
    ratings: ServiceAddress = DEFAULT_RATINGS
    timeout: float = 3.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Upstreams:
        return cls(
            details=ServiceAddress.from_env("details", environ),
            reviews=ServiceAddress.from_env("reviews", environ),
            ratings=ServiceAddress.from_env("ratings", environ),
            timeout=float(environ.get("PRODUCTPAGE_TIMEOUT", "3")),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What productpage answers for one upstream: its status and JSON body."""

    status: int
    body: Any

    @property
    def error(self) -> str | None:
        return self.body.get("error") if self.status != 200 else None


def unavailable(what: str) -> dict[str, str]:
    return {"error": f"Sorry, product {what} are currently unavailable for this book."}


class ProductService:
    """Fetches one product's parts; reviews get a second try (the deliberate Istio "bug")."""

    def __init__(self, client: UpstreamClient, upstreams: Upstreams) -> None:
        self._client = client
        self._upstreams = upstreams

    async def details(self, product_id: str, headers: Mapping[str, str]) -> Outcome:
        return await self._fetch("details", self._upstreams.details, product_id, headers, 1)

    async def reviews(self, product_id: str, headers: Mapping[str, str]) -> Outcome:
        return await self._fetch("reviews", self._upstreams.reviews, product_id, headers, 2)

    async def ratings(self, product_id: str, headers: Mapping[str, str]) -> Outcome:
        return await self._fetch("ratings", self._upstreams.ratings, product_id, headers, 1)

    async def _fetch(
        self,
        what: str,
        service: ServiceAddress,
        product_id: str,
        headers: Mapping[str, str],
        tries: int,
    ) -> Outcome:
        url = f"{service.base_url}/{what}/{quote(product_id, safe='')}"
        result = UpstreamResult(None)
        for _ in range(tries):
            result = await self._client.get_json(url, headers, self._upstreams.timeout)
            if result.ok:
                return Outcome(200, result.body)
        # Istio keeps the last upstream status, else 500 when nothing answered.
        return Outcome(result.status or 500, unavailable(what))

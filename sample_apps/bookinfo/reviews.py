"""The reviews service: two fixed reviews; v2/v3 add stars from ratings (black/red)."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from sample_apps.bookinfo.common import ListenAddress, new_app, run
from sample_apps.bookinfo.forwarding import forwarded_headers
from sample_apps.bookinfo.upstream import (
    ServiceAddress,
    UpstreamClient,
    proxy_from_env,
    upstream_context,
)

REVIEWS = (
    (
        "Reviewer1",
        "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!",
    ),
    (
        "Reviewer2",
        "Absolutely fun and entertaining. The play lacks thematic depth when compared to other "
        "plays by Shakespeare.",
    ),
)
DEFAULT_RATINGS = ServiceAddress("ratings")
RATINGS_UNAVAILABLE = "Ratings service is currently unavailable"
# version -> (star colour, timeout to ratings in seconds); v1 never calls ratings.
VERSIONS: Mapping[str, tuple[str, float] | None] = {
    "v1": None,
    "v2": ("black", 10.0),
    "v3": ("red", 2.5),
}


@dataclass(frozen=True, slots=True)
class ReviewsSettings:
    """Which reviews version this instance plays, and how it names itself and ratings."""

    version: str = "v1"
    podname: str = "reviews-v1"
    clustername: str = "null"
    ratings: ServiceAddress = DEFAULT_RATINGS
    proxy: str | None = None

    def __post_init__(self) -> None:
        if self.version not in VERSIONS:
            raise ValueError(f"SERVICE_VERSION must be one of {sorted(VERSIONS)}: {self.version}")

    @property
    def star_color(self) -> str | None:
        stars = VERSIONS[self.version]
        return stars[0] if stars else None

    @property
    def ratings_timeout(self) -> float:
        stars = VERSIONS[self.version]
        return stars[1] if stars else 0.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ReviewsSettings:
        version = environ.get("SERVICE_VERSION", "v1")
        return cls(
            version=version,
            podname=environ.get("PODNAME", f"reviews-{version}-{socket.gethostname()}"),
            clustername=environ.get("CLUSTER_NAME", "null"),
            ratings=ServiceAddress.from_env("ratings", environ),
            proxy=proxy_from_env(environ),
        )


def reviews_body(
    product_id: str, settings: ReviewsSettings, ratings: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The reviews JSON; `ratings` None means the ratings call failed (ignored by v1)."""
    reviews: list[dict[str, Any]] = []
    for reviewer, text in REVIEWS:
        review: dict[str, Any] = {"reviewer": reviewer, "text": text}
        if settings.star_color is not None:
            stars = (ratings or {}).get(reviewer)
            if isinstance(stars, int):
                review["rating"] = {"stars": stars, "color": settings.star_color}
            else:
                review["rating"] = {"error": RATINGS_UNAVAILABLE}
        reviews.append(review)
    return {
        "id": product_id,
        "podname": settings.podname,
        "clustername": settings.clustername,
        "reviews": reviews,
    }


SETTINGS = web.AppKey("settings", ReviewsSettings)
CLIENT = web.AppKey("client", UpstreamClient)


async def _fetch_ratings(request: web.Request, product_id: str) -> Mapping[str, Any] | None:
    settings = request.app[SETTINGS]
    url = f"{settings.ratings.base_url}/ratings/{product_id}"
    headers = forwarded_headers(request.headers)
    result = await request.app[CLIENT].get_json(url, headers, settings.ratings_timeout)
    body = result.body if result.ok and isinstance(result.body, dict) else {}
    ratings = body.get("ratings")
    return ratings if isinstance(ratings, dict) else None


async def get_reviews(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    product_id = request.match_info["id"]
    ratings = None
    if settings.star_color is not None:
        ratings = await _fetch_ratings(request, product_id)
    return web.json_response(reviews_body(product_id, settings, ratings))


def create_app(settings: ReviewsSettings) -> web.Application:
    app = new_app("reviews")
    app[SETTINGS] = settings
    app.cleanup_ctx.append(upstream_context(CLIENT, settings.proxy))
    app.router.add_get(r"/reviews/{id:\d+}", get_reviews)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    app = create_app(ReviewsSettings.from_env(os.environ))
    run(app, "reviews", ListenAddress.from_args("reviews", argv, os.environ))


if __name__ == "__main__":
    main()

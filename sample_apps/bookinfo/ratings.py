"""The ratings service: stars per reviewer, with failure and delay knobs for fault demos."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

from sample_apps.bookinfo.common import ListenAddress, new_app, run

DEFAULT_RATINGS: Mapping[str, int] = {"Reviewer1": 5, "Reviewer2": 4}
Sleep = Callable[[float], Awaitable[None]]


def parse_duration(text: str) -> float:
    """Seconds from `7s`, `500ms`, `2.5` (plain numbers are seconds)."""
    value = text.strip().lower()
    if value.endswith("ms"):
        return float(value[:-2]) / 1000
    if value.endswith("s"):
        return float(value[:-1])
    return float(value)


def _rate(environ: Mapping[str, str], name: str, default: float) -> float:
    value = float(environ.get(name, default))
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value


@dataclass(frozen=True, slots=True)
class RatingsSettings:
    """Fault knobs: share of requests failing with 503, added delay and share delayed."""

    failure_rate: float = 0.0
    delay: float = 0.0
    delay_rate: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> RatingsSettings:
        return cls(
            failure_rate=_rate(environ, "FAILURE_RATE", 0.0),
            delay=parse_duration(environ.get("DELAY", "0")),
            delay_rate=_rate(environ, "DELAY_RATE", 1.0),
        )


class FaultInjector:
    """Decides per request whether to delay and whether to fail, from an injected RNG."""

    def __init__(self, settings: RatingsSettings, rng: random.Random, sleep: Sleep) -> None:
        self._settings = settings
        self._rng = rng
        self._sleep = sleep

    async def should_fail(self) -> bool:
        """Apply the delay (if drawn), then draw the failure."""
        settings = self._settings
        if settings.delay > 0 and self._rng.random() < settings.delay_rate:
            await self._sleep(settings.delay)
        return settings.failure_rate > 0 and self._rng.random() < settings.failure_rate


FAULTS = web.AppKey("faults", FaultInjector)
STORE: web.AppKey[dict[int, dict[str, int]]] = web.AppKey("store")


def _json_error(status: type[web.HTTPException], message: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json")


async def _checked_product_id(request: web.Request) -> int:
    """Faults first, then id validation: the common prologue of both ratings routes."""
    if await request.app[FAULTS].should_fail():
        raise _json_error(web.HTTPServiceUnavailable, "Service unavailable")
    try:
        return int(request.match_info["id"])
    except ValueError:
        raise _json_error(web.HTTPBadRequest, "please provide numeric product ID") from None


async def get_ratings(request: web.Request) -> web.Response:
    product_id = await _checked_product_id(request)
    ratings = request.app[STORE].get(product_id, DEFAULT_RATINGS)
    return web.json_response({"id": product_id, "ratings": dict(ratings)})


def _valid_ratings(body: object) -> dict[str, int] | None:
    if not isinstance(body, dict):
        return None
    if not all(isinstance(k, str) and type(v) is int for k, v in body.items()):
        return None
    return body


async def post_ratings(request: web.Request) -> web.Response:
    product_id = await _checked_product_id(request)
    try:
        ratings = _valid_ratings(await request.json())
    except ValueError:
        ratings = None
    if ratings is None:
        raise _json_error(web.HTTPBadRequest, "please provide valid ratings JSON")
    request.app[STORE][product_id] = ratings
    return web.json_response({"id": product_id, "ratings": ratings})


def create_app(
    settings: RatingsSettings,
    rng: random.Random | None = None,
    sleep: Sleep = asyncio.sleep,
) -> web.Application:
    app = new_app("ratings")
    app[FAULTS] = FaultInjector(settings, rng or random.Random(), sleep)
    app[STORE] = {}
    app.router.add_get("/ratings/{id}", get_ratings)
    app.router.add_post("/ratings/{id}", post_ratings)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    seed = os.environ.get("RANDOM_SEED")
    rng = random.Random(int(seed)) if seed is not None else random.Random()
    app = create_app(RatingsSettings.from_env(os.environ), rng)
    run(app, "ratings", ListenAddress.from_args("ratings", argv, os.environ))


if __name__ == "__main__":
    main()

"""The demo's traffic generator against a fake gateway: page loads, some logged in as jason."""

from __future__ import annotations

import asyncio
import random

from aiohttp import web
from aiohttp.test_utils import TestServer

from meshctl.demo.traffic import TrafficGenerator, TrafficPlan
from tests.ports import free_port


def fake_gateway(seen: list[tuple[str, str | None]]) -> web.Application:
    """productpage's login contract: POST /login sets the session cookie, then redirects."""

    async def login(request: web.Request) -> web.Response:
        user = str((await request.post())["username"])
        response = web.HTTPFound("/productpage")
        response.set_cookie("session", f"user:{user}", path="/")
        seen.append(("login", user))
        raise response

    async def page(request: web.Request) -> web.Response:
        seen.append(("page", request.cookies.get("session")))
        return web.Response(text="<html>Reviews served by: reviews-v1</html>",
                            content_type="text/html")

    app = web.Application()
    app.router.add_post("/login", login)
    app.router.add_get("/productpage", page)
    return app


async def no_wait(_: float) -> None:
    await asyncio.sleep(0)


async def test_loads_the_page_with_a_share_as_jason() -> None:
    """Each load is anonymous or carries jason's session cookie, in the planned share."""
    seen: list[tuple[str, str | None]] = []
    async with TestServer(fake_gateway(seen), host="127.0.0.1") as server:
        gen = TrafficGenerator(str(server.make_url("/")), TrafficPlan(rate=50, user_share=0.4),
                               rng=random.Random(7), sleep=no_wait)
        await gen.run(requests=50)
    assert seen.count(("login", "jason")) >= 1
    pages = [cookie for kind, cookie in seen if kind == "page"]
    jason = sum(1 for c in pages if c == "user:jason")
    logins = seen.count(("login", "jason"))
    anonymous = pages.count(None)
    assert anonymous + jason == len(pages) == 50 + logins  # the login redirect loads it too
    assert 10 <= jason - logins <= 30  # about 40% of 50
    assert gen.counts["anonymous 200"] == anonymous
    assert gen.counts["jason 200"] == 50 - anonymous
    assert gen.counts["login 200"] == logins


async def test_a_down_gateway_is_counted_not_raised() -> None:
    """Connection errors are counted per user; the generator keeps going."""
    port = free_port()
    gen = TrafficGenerator(f"http://127.0.0.1:{port}", TrafficPlan(rate=100, user_share=0.5),
                           rng=random.Random(1), sleep=no_wait)
    await gen.run(requests=10)
    assert gen.counts["anonymous error"] + gen.counts["jason error"] == 10
    assert gen.counts["login error"] >= 1

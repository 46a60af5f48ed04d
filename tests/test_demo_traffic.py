"""The demo's traffic generator against a fake gateway: page loads, some logged in as jason."""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from meshctl.demo.traffic import TrafficGenerator, TrafficPlan
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


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


async def test_module_runs_as_compose_traffic_service_until_sigterm() -> None:
    """`python -m meshctl.demo.traffic URL` (compose's `traffic` service) loads the page as a
    process of its own, and `docker stop`'s SIGTERM ends it with exit 0 and its counts."""
    seen: list[tuple[str, str | None]] = []
    async with TestServer(fake_gateway(seen), host="127.0.0.1") as server:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "meshctl.demo.traffic", str(server.make_url("/")),
            "--rate", "20", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(30):
            while sum(1 for kind, _ in seen if kind == "page") < 5:
                await asyncio.sleep(0.05)  # poll until the process has loaded the page
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    assert "anonymous 200: " in out.decode(), out.decode()


def test_module_refuses_a_rate_of_zero() -> None:
    done = subprocess.run([sys.executable, "-m", "meshctl.demo.traffic", "http://gateway:8080",
                           "--rate", "0"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--rate must be above 0" in done.stderr

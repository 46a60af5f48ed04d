"""Bookinfo apps as real processes behind a tiny forward proxy that stands in for the sidecar."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from sample_apps.bookinfo.ratings import FaultInjector, RatingsSettings, parse_duration
from sample_apps.bookinfo.reviews import ReviewsSettings, reviews_body
from sample_apps.bookinfo.session import SessionSigner
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
STARTUP_DEADLINE = 20.0
PER_CALL_TIMEOUT = 0.5  # productpage's PRODUCTPAGE_TIMEOUT in these tests (Istio: 3 s)
NO_UPSTREAM = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 19\r\n\r\nno healthy upstream"
TRACE_HEADERS = {
    "x-request-id": "req-123",
    "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "tracestate": "ami=1",
    "x-b3-traceid": "0af7651916cd43dd8448eb211c80319c",
    "x-b3-spanid": "b7ad6b7169203331",
    "x-b3-parentspanid": "a2fb4a1d1a96d312",
    "x-b3-sampled": "1",
    "x-b3-flags": "0",
    "user-agent": "bookinfo-test/1.0",
    "cookie": "theme=dark",
    "authorization": "Bearer token-abc",
}


@dataclass
class Seen:
    """One request the fake sidecar received: target host, path and lower-cased headers."""

    host: str
    path: str
    headers: dict[str, str]


@dataclass
class FakeSidecar:
    """Forward proxy on its own thread; a route is an app port, "down" (503) or "hang"."""

    routes: dict[str, int | str] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)

    def start(self) -> None:
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        threading.Thread(target=self._loop.run_forever, daemon=True).start()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)

    def hosts(self) -> list[str]:
        return [seen.host for seen in self.seen]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, _ = request_line.split(" ", 2)
            headers = {
                k.strip().lower(): v.strip()
                for k, v in (line.split(":", 1) for line in lines if line)
            }
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            url = urlsplit(target)  # absolute-form, as HTTP_PROXY clients send it
            self.seen.append(Seen(url.hostname or "", url.path, headers))
            route = self.routes.get(url.hostname or "", "down")
            if route == "hang":
                await reader.read()  # answer nothing until the client gives up
            elif isinstance(route, int):
                writer.write(await self._forward(route, method, url.path, headers, body))
            else:
                writer.write(NO_UPSTREAM)
            await writer.drain()
        finally:
            writer.close()

    @staticmethod
    async def _forward(
        port: int, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> bytes:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return NO_UPSTREAM
        headers = {**headers, "connection": "close"}
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        up_writer.write(f"{method} {path} HTTP/1.1\r\n{head}\r\n".encode("latin-1") + body)
        response = await up_reader.read()  # the app closes after one response
        up_writer.close()
        return response


class AppProcess:
    """One Bookinfo app as a subprocess; a thread collects its stdout lines."""

    def __init__(self, module: str, env: dict[str, str]) -> None:
        self.port = free_port()
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"sample_apps.bookinfo.{module}", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._collect, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        """Wait until a log line matches, the process exits, or the deadline passes."""

        def done() -> bool:
            return any(map(predicate, self.lines)) or self.proc.poll() is not None

        with self._changed:
            self._changed.wait_for(done, timeout)
        return any(map(predicate, self.lines))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Bookinfo:
    sidecar: FakeSidecar
    apps: dict[str, AppProcess]

    def route(self, host: str, target: str) -> None:
        """Point `host` at an app by name, or at "down"/"hang"."""
        app = self.apps.get(target)
        self.sidecar.routes[host] = app.port if app else target

    @property
    def page(self) -> str:
        return self.apps["productpage"].url


@pytest.fixture(scope="module")
def bookinfo_module() -> Iterator[Bookinfo]:
    sidecar = FakeSidecar()
    sidecar.start()
    base = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        "HTTP_PROXY": f"http://127.0.0.1:{sidecar.port}",
        "NO_PROXY": "*",  # must not bypass the sidecar
        "no_proxy": "*",
        "PRODUCTPAGE_TIMEOUT": str(PER_CALL_TIMEOUT),
    }
    specs: dict[str, tuple[str, dict[str, str]]] = {
        "details": ("details", {}),
        "ratings": ("ratings", {}),
        "ratings-failing": ("ratings", {"FAILURE_RATE": "1"}),
        "reviews-v1": ("reviews", {"SERVICE_VERSION": "v1", "PODNAME": "reviews-v1-test"}),
        "reviews-v2": ("reviews", {"SERVICE_VERSION": "v2", "PODNAME": "reviews-v2-test"}),
        "reviews-v3": ("reviews", {"SERVICE_VERSION": "v3", "PODNAME": "reviews-v3-test"}),
        "productpage": ("productpage", {}),
    }
    apps = {name: AppProcess(module, {**base, **extra}) for name, (module, extra) in specs.items()}
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE
        for name, app in apps.items():
            ready = app.wait_for_line(
                lambda line: "listening on" in line, max(0.0, deadline - time.monotonic())
            )
            assert ready, f"{name} did not start: {app.lines}"
        yield Bookinfo(sidecar, apps)
    finally:
        for app in apps.values():
            app.stop()
        sidecar.stop()


@pytest.fixture
def bookinfo(bookinfo_module: Bookinfo) -> Bookinfo:
    """The running apps with the default routes (reviews → v1) and an empty request record."""
    bookinfo_module.sidecar.seen.clear()
    for host in ("details", "ratings"):
        bookinfo_module.route(host, host)
    bookinfo_module.route("reviews", "reviews-v1")
    return bookinfo_module


Fetched = tuple[int, str, aiohttp.ClientResponse]


async def fetch(url: str, method: str = "GET", **kwargs: Any) -> Fetched:
    """One request on a fresh session: status, body text and the (closed) response."""
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, allow_redirects=False, **kwargs) as response,
    ):
        return response.status, await response.text(), response


def session_cookie(value: str) -> dict[str, str]:
    return {"cookie": f"session={value}"}


def star_spans(html: str) -> list[tuple[int, str]]:
    return [
        (int(n), color)
        for n, color in re.findall(r'class="stars" data-stars="(\d)" data-color="(\w+)"', html)
    ]


# --- processes --------------------------------------------------------------------------------


async def test_every_app_answers_health(bookinfo: Bookinfo) -> None:
    """Each app answers `GET /health` with 200 and a status text."""
    for app in bookinfo.apps.values():
        status, text, _ = await fetch(f"{app.url}/health")
        assert status == 200 and "is healthy" in text


async def test_details_answers_book_and_rejects_bad_id(bookinfo: Bookinfo) -> None:
    """details returns the fixed record for a numeric id and Istio's 400 error otherwise."""
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{bookinfo.apps['details'].url}/details/7") as response:
            assert response.status == 200
            body = await response.json()
        async with session.get(f"{bookinfo.apps['details'].url}/details/abc") as response:
            assert response.status == 400
            assert await response.json() == {"error": "please provide numeric product id"}
    assert body["id"] == 7 and body["ISBN-10"] == "1234567890" and body["pages"] == 200


async def test_ratings_get_post_and_failure_knob(bookinfo: Bookinfo) -> None:
    """ratings serves defaults, stores POSTed ratings, rejects bad ids, and fails at rate 1."""
    url = bookinfo.apps["ratings"].url
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/ratings/0") as response:
            assert await response.json() == {"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}
        async with session.post(f"{url}/ratings/9", json={"Reviewer1": 1}) as response:
            assert response.status == 200
        async with session.get(f"{url}/ratings/9") as response:
            assert await response.json() == {"id": 9, "ratings": {"Reviewer1": 1}}
        async with session.get(f"{url}/ratings/x") as response:
            assert response.status == 400
            assert await response.json() == {"error": "please provide numeric product ID"}
        async with session.get(f"{bookinfo.apps['ratings-failing'].url}/ratings/0") as response:
            assert response.status == 503
            assert await response.json() == {"error": "Service unavailable"}


async def test_productpage_shows_details_through_the_sidecar(bookinfo: Bookinfo) -> None:
    """The page shows the book details fetched via HTTP_PROXY, even with NO_PROXY=*."""
    status, html, _ = await fetch(f"{bookinfo.page}/productpage")
    assert status == 200
    assert "The Comedy of Errors" in html
    assert "<th>ISBN-10:</th><td>1234567890</td>" in html
    assert "<th>Publisher:</th><td>PublisherA</td>" in html
    assert bookinfo.sidecar.hosts() == ["details", "reviews"]
    assert [seen.path for seen in bookinfo.sidecar.seen] == ["/details/0", "/reviews/0"]


@pytest.mark.parametrize(
    ("version", "stars"),
    [("v1", []), ("v2", [(5, "black"), (4, "black")]), ("v3", [(5, "red"), (4, "red")])],
)
async def test_reviews_versions_show_their_stars(
    bookinfo: Bookinfo, version: str, stars: list[tuple[int, str]]
) -> None:
    """v1 shows no stars, v2 black stars, v3 red stars, and the page names the pod."""
    bookinfo.route("reviews", f"reviews-{version}")
    _, html, _ = await fetch(f"{bookinfo.page}/productpage")
    assert star_spans(html) == stars
    assert f"Reviews served by: reviews-{version}-test" in html
    assert ("ratings" in bookinfo.sidecar.hosts()) == (version != "v1")


async def test_ratings_failure_shows_unavailable_in_red(bookinfo: Bookinfo) -> None:
    """When ratings fails, each review shows Istio's ratings error text in red."""
    bookinfo.route("reviews", "reviews-v2")
    bookinfo.route("ratings", "ratings-failing")
    _, html, _ = await fetch(f"{bookinfo.page}/productpage")
    errors = re.findall(r'<p class="rating-error" style="color: red">([^<]*)</p>', html)
    assert errors == ["Ratings service is currently unavailable"] * 2
    assert star_spans(html) == []


async def test_details_down_gives_error_text_and_upstream_status(bookinfo: Bookinfo) -> None:
    """With details down, the API passes the 503 on with Istio's text; the page shows it."""
    bookinfo.route("details", "down")
    status, text, response = await fetch(f"{bookinfo.page}/api/v1/products/0")
    assert status == 503
    assert text == '{"error": "Sorry, product details are currently unavailable for this book."}'
    assert response.content_type == "application/json"
    _, html, _ = await fetch(f"{bookinfo.page}/productpage")
    assert "Error fetching product details" in html
    assert "Sorry, product details are currently unavailable for this book." in html


async def test_reviews_tried_twice_on_timeout(bookinfo: Bookinfo) -> None:
    """A hanging reviews call is tried twice (timeout x 2) before the page reports the error."""
    bookinfo.route("reviews", "hang")
    started = time.monotonic()
    status, html, _ = await fetch(f"{bookinfo.page}/productpage")
    elapsed = time.monotonic() - started
    assert status == 200
    assert "Error fetching product reviews" in html
    assert "Sorry, product reviews are currently unavailable for this book." in html
    assert bookinfo.sidecar.hosts().count("reviews") == 2
    # Both tries waited out their timeout (a lower bound only); the two calls the sidecar
    # saw show there was no third.
    assert elapsed >= 2 * PER_CALL_TIMEOUT


async def test_reviews_api_keeps_last_status_and_500_without_answer(bookinfo: Bookinfo) -> None:
    """The reviews API answers the last upstream status after two tries, else 500."""
    bookinfo.route("reviews", "down")
    status, text, _ = await fetch(f"{bookinfo.page}/api/v1/products/0/reviews")
    assert (status, text) == (
        503,
        '{"error": "Sorry, product reviews are currently unavailable for this book."}',
    )
    assert bookinfo.sidecar.hosts() == ["reviews", "reviews"]
    bookinfo.route("reviews", "hang")
    status, _, _ = await fetch(f"{bookinfo.page}/api/v1/products/0/reviews")
    assert status == 500


async def test_products_and_ratings_api(bookinfo: Bookinfo) -> None:
    """The product list is Istio's; ratings pass through once, with the error when down."""
    status, text, _ = await fetch(f"{bookinfo.page}/api/v1/products")
    assert status == 200 and '"title": "The Comedy of Errors"' in text
    status, text, _ = await fetch(f"{bookinfo.page}/api/v1/products/0/ratings")
    assert (status, text) == (200, '{"id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4}}')
    bookinfo.route("ratings", "down")
    status, text, _ = await fetch(f"{bookinfo.page}/api/v1/products/0/ratings")
    assert status == 503 and "product ratings are currently unavailable" in text
    assert bookinfo.sidecar.hosts() == ["ratings", "ratings"]


async def test_login_sends_end_user_and_logout_clears_it(bookinfo: Bookinfo) -> None:
    """After login as jason every outbound call (incl. reviews→ratings) carries end-user."""
    bookinfo.route("reviews", "reviews-v2")
    status, _, response = await fetch(f"{bookinfo.page}/login", "POST", data={"username": "jason"})
    assert status == 302 and response.headers["Location"] == "/productpage"
    cookie = response.cookies["session"].value
    _, html, _ = await fetch(f"{bookinfo.page}/productpage", headers=session_cookie(cookie))
    assert "Signed in as jason" in html
    assert bookinfo.sidecar.hosts() == ["details", "reviews", "ratings"]
    assert {seen.headers.get("end-user") for seen in bookinfo.sidecar.seen} == {"jason"}

    status, _, response = await fetch(f"{bookinfo.page}/logout")
    assert status == 302 and response.cookies["session"].value == ""
    bookinfo.sidecar.seen.clear()
    _, html, _ = await fetch(f"{bookinfo.page}/productpage")
    assert "Signed in as" not in html
    assert all("end-user" not in seen.headers for seen in bookinfo.sidecar.seen)


@pytest.mark.parametrize("name", ["a\r\nx-evil: 1", "tab\there", "x" * 65])
async def test_login_refuses_a_name_that_cannot_be_a_header(bookinfo: Bookinfo,
                                                             name: str) -> None:
    """The name is sent as end-user on every call: control characters (or an endless name)
    would break every page of that user, so login answers 400 and sets no cookie."""
    status, text, response = await fetch(f"{bookinfo.page}/login", "POST",
                                         data={"username": name})
    assert status == 400 and "printable" in text
    assert "session" not in response.cookies


async def test_forged_session_is_not_signed_in(bookinfo: Bookinfo) -> None:
    """A session cookie not signed by productpage does not sign anyone in."""
    forged = SessionSigner(b"other-secret").dump("jason")
    _, html, _ = await fetch(f"{bookinfo.page}/productpage", headers=session_cookie(forged))
    assert "Signed in as" not in html


async def test_trace_and_identity_headers_are_forwarded(bookinfo: Bookinfo) -> None:
    """productpage and reviews copy trace and identity headers onto their outbound calls."""
    bookinfo.route("reviews", "reviews-v3")
    headers = {**TRACE_HEADERS, "end-user": "alice"}
    await fetch(f"{bookinfo.page}/productpage", headers=headers)
    assert bookinfo.sidecar.hosts() == ["details", "reviews", "ratings"]
    for seen in bookinfo.sidecar.seen:
        assert {k: seen.headers.get(k) for k in headers} == headers, seen.host


async def test_access_log_has_one_line_per_request(bookinfo: Bookinfo) -> None:
    """Each app logs `method path status` per request, so a mirror can be checked in the log."""
    bookinfo.route("reviews", "reviews-v2")
    await fetch(f"{bookinfo.page}/productpage?from=log-test")
    assert bookinfo.apps["productpage"].wait_for_line(
        lambda line: line.startswith("GET /productpage?from=log-test 200 "), 5.0
    )
    assert bookinfo.apps["reviews-v2"].wait_for_line(
        lambda line: line.startswith("GET /reviews/0 200 host=reviews:9080"), 5.0
    )


# --- pure pieces ------------------------------------------------------------------------------


def test_parse_duration_units() -> None:
    """Delays read as seconds from `7s`, `500ms` or a plain number."""
    assert [parse_duration(v) for v in ("7s", "500ms", "2.5", " 1S ")] == [7.0, 0.5, 2.5, 1.0]


async def test_fault_injector_rates_follow_seeded_rng() -> None:
    """Failure and delay shares follow the configured rates, drawn from the injected RNG."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    settings = RatingsSettings(failure_rate=0.5, delay=7.0, delay_rate=0.25)
    faults = FaultInjector(settings, random.Random(1), fake_sleep)
    failures = [await faults.should_fail() for _ in range(2000)]
    assert 900 < sum(failures) < 1100
    assert 400 < len(slept) < 600 and set(slept) == {7.0}
    quiet = FaultInjector(RatingsSettings(), random.Random(1), fake_sleep)
    assert not any([await quiet.should_fail() for _ in range(100)])


def test_ratings_settings_reject_rate_outside_unit_interval() -> None:
    """A FAILURE_RATE above 1 is a configuration error, not a silent 100%."""
    with pytest.raises(ValueError, match="FAILURE_RATE"):
        RatingsSettings.from_env({"FAILURE_RATE": "50"})


def test_reviews_body_by_version() -> None:
    """v1 has no rating key; v3 colours stars red; missing ratings become the error text."""
    v1 = reviews_body("0", ReviewsSettings(version="v1"), None)
    assert all("rating" not in review for review in v1["reviews"])
    v3 = reviews_body("0", ReviewsSettings(version="v3"), {"Reviewer1": 5})
    assert [r["rating"] for r in v3["reviews"]] == [
        {"stars": 5, "color": "red"},
        {"error": "Ratings service is currently unavailable"},
    ]
    assert v3["id"] == "0" and v3["clustername"] == "null"


def test_session_signer_round_trip_and_tamper() -> None:
    """A signed user name loads back; altered or foreign cookies load as nobody."""
    signer = SessionSigner(b"secret")
    value = signer.dump("jason")
    assert signer.load(value) == "jason"
    assert signer.load(value[:-2] + "xx") is None
    assert signer.load("garbage") is None

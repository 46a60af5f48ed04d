"""End to end: `meshctl demo up --detach` serves Bookinfo via the gateway; `down` leaves nothing.

Real processes on 127.0.0.1 (control plane, 7 proxies, 6 apps), on free ports so a demo already
running on this machine is not disturbed. Scenario tests apply a file from
sample_apps/bookinfo/routes/ to the running demo and check what a reader of the page sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.canary.controller import EVENTS_KEPT
from meshctl.client import ControlPlaneClient
from meshctl.demo.procs import listening, pid_alive
from meshctl.demo.state import RunDir
from tests.observe_harness import Traffic
from tests.ports import free_block
from tests.ports import free_port as _free_port

ROOT = Path(__file__).resolve().parent.parent
ROUTES = ROOT / "sample_apps" / "bookinfo" / "routes"
BLOCK = 62  # ports base..base+61 (see meshctl/demo/topology.py)
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@dataclass(frozen=True, slots=True)
class Demo:
    workdir: Path
    gateway: int
    api: int
    banner: str = ""  # what `demo up --detach` printed

    def meshctl(self, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k not in ("AMI_TOKEN",)}
        env["AMI_CONTROL_PLANE"] = f"http://127.0.0.1:{self.api}"
        return subprocess.run([sys.executable, "-m", "meshctl", *args], cwd=self.workdir,
                              env=env, capture_output=True, text=True, timeout=timeout)

    def page(self, user: str | None = None) -> tuple[int, str, float]:
        """Load /productpage (as `user`: log in first, send its cookie); status, HTML, seconds."""
        headers = {}
        if user:
            login = urllib.request.Request(
                f"http://127.0.0.1:{self.gateway}/login", data=f"username={user}".encode(),
                method="POST")
            opener = urllib.request.build_opener(
                urllib.request.ProxyHandler({}), _NoRedirect())
            try:
                opener.open(login, timeout=20)
            except urllib.error.HTTPError as exc:
                headers["Cookie"] = exc.headers["Set-Cookie"].split(";", 1)[0]
        req = urllib.request.Request(f"http://127.0.0.1:{self.gateway}/productpage",
                                     headers=headers)
        started = time.monotonic()
        try:
            with DIRECT.open(req, timeout=30) as resp:
                return resp.status, resp.read().decode(), time.monotonic() - started
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), time.monotonic() - started


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _free_block() -> int:
    return free_block(BLOCK)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("demo")
    d = Demo(workdir, _free_port(), _free_port())
    up = d.meshctl("demo", "up", "--detach", "--no-traffic", "--gateway-port", str(d.gateway),
                   "--api-port", str(d.api), "--grpc-port", str(_free_port()),
                   "--base-port", str(_free_block()), "--certs-dir", str(workdir / "certs"))
    try:
        assert up.returncode == 0, f"demo up failed:\n{up.stdout}\n{up.stderr}"
        assert "Bookinfo is up" in up.stdout and "mTLS STRICT" in up.stdout
        yield replace(d, banner=up.stdout)
    finally:
        d.meshctl("demo", "down")


def test_page_loads_through_the_gateway_on_v1(demo: Demo) -> None:
    """The product page answers through the gateway, served by reviews-v1, without stars."""
    status, html, _ = demo.page()
    assert status == 200, html
    assert "The Comedy of Errors" in html
    assert "Reviews served by: reviews-v1" in html
    assert "data-stars" not in html


def test_status_lists_every_process_alive(demo: Demo) -> None:
    """`demo status` shows the control plane, 7 proxies and 6 apps, all alive."""
    result = demo.meshctl("demo", "status")
    assert result.returncode == 0, result.stdout
    rows = [line.split() for line in result.stdout.splitlines()[1:] if line and line[0] != " "]
    alive = {r[0]: r[2] for r in rows[1:]}
    assert len(alive) == 14 and set(alive.values()) == {"yes"}, result.stdout


def test_the_gateway_is_a_trusted_gateway(demo: Demo) -> None:
    """The demo's gateway registers with its gateway token: proxy-status shows it trusted
    with a certificate carrying the gateway marker (sidecars keep its
    x-forwarded-client-cert) and `meshctl check` has no warning for it."""
    status = demo.meshctl("proxy-status", "-o", "json")
    assert status.returncode == 0, status.stderr
    listed = json.loads(status.stdout)
    trusted = {p["name"]: p["trustedGateway"] for p in listed}
    assert trusted.pop("gateway") is True
    assert set(trusted.values()) == {None}  # sidecars
    marked = {p["name"]: p["gatewayCertificate"] for p in listed}
    assert marked.pop("gateway") is True and set(marked.values()) == {None}
    check = demo.meshctl("check")
    assert "✔ gateways trusted" in check.stdout, check.stdout
    assert "✔ gateway certificates marked" in check.stdout
    assert "✔ gateway identities not shared" in check.stdout


def test_the_banners_next_commands_work_as_printed(demo: Demo) -> None:
    """The banner's "Try next" lines run as printed, in the demo's directory (not the
    project's) and with nothing else set: first the AMI_CONTROL_PLANE of its own --api-port
    (meshctl would ask 127.0.0.1:15080, another demo's or nobody's), then the routes files by
    a path that exists from there."""
    tried = demo.banner.split("Try next", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    commands = [line.split("#", 1)[0].split() for line in tried]
    assert commands[0] == ["export", f"AMI_CONTROL_PLANE=http://127.0.0.1:{demo.api}"], tried
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMI_")}
    env["AMI_CONTROL_PLANE"] = commands[0][1].split("=", 1)[1]
    applies = [c for c in commands if c[:3] == ["meshctl", "apply", "-f"]]
    assert applies and all(Path(demo.workdir, c[3]).is_file() for c in applies), tried
    back = next(c for c in applies if c[3].endswith("all-v1.yaml"))
    for argv in (back, ["meshctl", "stat"]):
        done = subprocess.run([sys.executable, "-m", "meshctl", *argv[1:]], cwd=demo.workdir,
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (argv, done.stderr)


def apply(demo: Demo, name: str) -> None:
    """Apply a scenario file and wait until every proxy has ACKed the store version it made."""
    path = ROUTES / f"{name}.yaml"
    result = demo.meshctl("apply", "-f", str(path))
    assert result.returncode == 0, result.stderr
    client = ControlPlaneClient(f"http://127.0.0.1:{demo.api}")
    version = max(int(client.get(d["kind"], d["metadata"]["name"])["metadata"]["resourceVersion"])
                  for d in yaml.safe_load_all(path.read_text()))
    url = f"http://127.0.0.1:{demo.api}/api/v1/sync?storeVersion={version}&timeout=20"
    with DIRECT.open(url, timeout=30) as resp:
        assert json.loads(resp.read())["synced"] is True


def test_jason_to_v2_shows_black_stars_only_to_jason(demo: Demo) -> None:
    """reviews-jason-v2: jason sees black stars; an anonymous reader sees none."""
    apply(demo, "reviews-jason-v2")
    try:
        _, html, _ = demo.page("jason")
        assert 'data-color="black"' in html and "reviews-v2" in html
        _, html, _ = demo.page()
        assert "data-stars" not in html
    finally:
        apply(demo, "all-v1")


def test_jason_abort_shows_ratings_unavailable_at_once(demo: Demo) -> None:
    """ratings-jason-abort: jason's page loads fast with the ratings error text, and
    `meshctl routes ratings` shows the named rule `jason-abort` failing every call."""
    apply(demo, "ratings-jason-abort")
    try:
        status, html, _ = demo.page("jason")
        assert status == 200
        # The abort answered, not a delay or the real ratings: the page shows the error text
        # and the rule's success rate below is 0 (no upper bound on the load's time).
        assert "Ratings service is currently unavailable" in html
        deadline = time.monotonic() + 60
        while True:
            demo.page("jason")
            out = demo.meshctl("routes", "ratings", "-o", "json")
            assert out.returncode == 0, out.stderr
            rows = {r["rule"]: r for r in json.loads(out.stdout)["rows"]}
            if rows.get("jason-abort", {}).get("rps"):
                break
            assert time.monotonic() < deadline, out.stdout
        assert rows["jason-abort"]["route"] == "default/ratings"
        assert rows["jason-abort"]["successRate"] == 0.0
    finally:
        apply(demo, "all-v1")


def test_reviews_v3_shows_red_stars(demo: Demo) -> None:
    """reviews-v3: every load shows red stars."""
    apply(demo, "reviews-v3")
    try:
        for _ in range(3):
            _, html, _ = demo.page()
            assert 'data-color="red"' in html and "reviews-v3" in html
    finally:
        apply(demo, "all-v1")


def test_jason_delay_makes_productpage_give_up_on_reviews(demo: Demo) -> None:
    """ratings-jason-delay: after ~6 s (3 s x 2) jason's page says reviews are unavailable."""
    apply(demo, "ratings-jason-delay")
    try:
        _, html, took = demo.page("jason")
        assert "Error fetching product reviews" in html
        assert took >= 5.5  # both tries waited out their 3 s timeout (a lower bound only)
    finally:
        apply(demo, "all-v1")


def test_jason_delay_that_fits_the_timeouts_shows_red_stars(demo: Demo) -> None:
    """ratings-jason-delay-v3: a 2 s delay with jason on v3 is slow (~2 s) but works."""
    apply(demo, "ratings-jason-delay-v3")
    try:
        _, html, took = demo.page("jason")
        assert 'data-color="red"' in html and "Error fetching" not in html
        assert took >= 1.8  # the delay happened (a lower bound only); no error: it fit
    finally:
        apply(demo, "all-v1")


def test_shift_50_50_to_v3_shows_red_stars_about_half_the_time(demo: Demo) -> None:
    """reviews-50-v3: of 30 loads, roughly half show red stars and the rest none."""
    apply(demo, "reviews-50-v3")
    try:
        red = sum('data-color="red"' in demo.page()[1] for _ in range(30))
        assert 5 <= red <= 25  # binomial(30, 0.5): outside this range about once in 3,000 runs
    finally:
        apply(demo, "all-v1")


def test_reviews_timeout_cuts_the_page_to_about_a_second(demo: Demo) -> None:
    """reviews-timeout: two tries cut at 0.5 s each, then "Error fetching product reviews"."""
    apply(demo, "reviews-timeout")
    try:
        _, html, took = demo.page()
        assert "Error fetching product reviews" in html
        assert took >= 0.9  # two tries of 0.5 s each waited out (a lower bound only)
    finally:
        apply(demo, "all-v1")


def test_circuit_breaker_turns_away_concurrent_requests(demo: Demo) -> None:
    """circuit-breaker: with 4 concurrent clients some loads get 503 `overflow`, some 200."""
    apply(demo, "circuit-breaker")
    try:
        def load(_: int) -> tuple[int, str | None]:
            req = urllib.request.Request(f"http://127.0.0.1:{demo.gateway}/productpage")
            try:
                with DIRECT.open(req, timeout=20) as resp:
                    return resp.status, None
            except urllib.error.HTTPError as exc:
                return exc.code, exc.headers.get("x-ami-reason")

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(load, range(60)))
        assert (200, None) in results
        assert (503, "overflow") in results
    finally:
        apply(demo, "all-v1")


def test_mirror_copies_every_load_to_v2_without_showing_it(demo: Demo) -> None:
    """mirror: pages come from v1, and reviews-v2's log gets each request with a -shadow host."""
    log = demo.workdir / ".ami" / "demo" / "reviews-v2.log"
    apply(demo, "mirror")
    try:
        before = log.read_text().count("-shadow")
        for _ in range(5):
            _, html, _ = demo.page()
            assert "Reviews served by: reviews-v1" in html
        deadline = time.monotonic() + 10  # fire-and-forget: the copy may land just after
        while log.read_text().count("-shadow") < before + 5:
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.05)
    finally:
        apply(demo, "all-v1")


def test_declared_canary_promotes_v3_under_traffic(demo: Demo) -> None:
    """canary-reviews-v3: while pages load, the control plane steps v3 25, 50, 75, 100 (an
    analysis every 10 s) and promotes it: red stars; `get canary` shows it Succeeded."""
    client = ControlPlaneClient(f"http://127.0.0.1:{demo.api}")

    def finished() -> dict[str, Any] | None:
        status = client.get("Canary", "reviews-v3").get("status") or {}
        return status if status.get("phase") in ("Succeeded", "RolledBack", "Failed") else None

    with Traffic(demo.page):
        apply(demo, "canary-reviews-v3")
        try:
            deadline = time.monotonic() + 150  # 5 analyses 10 s apart, on a busy machine
            while (status := finished()) is None:
                assert time.monotonic() < deadline, client.get("Canary", "reviews-v3")
                time.sleep(0.5)
            assert status["phase"] == "Succeeded", status
            messages = [e["message"] for e in status["events"]]
            steps = ["start: v1 75% / v3 25%", "advance to 50: v1 50% / v3 50%",
                     "advance to 75: v1 25% / v3 75%", "advance to 100: v1 0% / v3 100%"]
            # Every step, in order, between whatever holds or failed analyses a busy machine
            # adds; those may push the first steps out of the last EVENTS_KEPT events.
            taken = [m for m in messages if m.startswith(("start", "advance"))]
            assert taken == steps[len(steps) - len(taken):], messages
            assert len(taken) == len(steps) or len(messages) == EVENTS_KEPT, messages
            assert messages[-1] == "v3 promoted: v1 0% / v3 100%"
            _, html, _ = demo.page()
            assert 'data-color="red"' in html and "reviews-v3" in html
            row = demo.meshctl("get", "canary").stdout.splitlines()[1].split()
            assert row[:6] == ["reviews-v3", "reviews", "v1", "v3", "100", "Succeeded"]
        finally:
            assert demo.meshctl("delete", "canary", "reviews-v3").returncode == 0
            apply(demo, "all-v1")


def test_no_log_has_an_error_after_every_scenario(demo: Demo) -> None:
    """After all the scenarios above (run before this one, in file order), no process of the
    demo logged an ERROR or a traceback: a scenario that looks right to the user but fails
    inside a sidecar (each mirrored copy once did) is caught here."""
    logs = sorted((demo.workdir / ".ami" / "demo").glob("*.log"))
    assert logs
    bad = [f"{log.name}: {line[:200]}" for log in logs
           for line in log.read_text(errors="replace").splitlines()
           if " ERROR " in line or line.startswith("Traceback")]
    assert not bad, "\n".join(bad[:20])


def test_down_leaves_no_process_and_no_port(demo: Demo) -> None:
    """`demo down` stops every process and no demo port still listens; a second down is fine."""
    state = RunDir(demo.workdir / ".ami" / "demo").read()
    assert state is not None
    result = demo.meshctl("demo", "down")
    assert result.returncode == 0, result.stdout
    assert not pid_alive(state.supervisor)
    assert not any(pid_alive(p.pid, p.hint) for p in state.processes)
    assert not any(listening(port) for p in state.processes for _, _, port in p.ports)
    assert demo.meshctl("demo", "down").returncode == 0

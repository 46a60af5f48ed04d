"""The dashboard in headless Chromium (DevTools protocol): graph, route splits, canaries,
screenshots."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from meshctl.api.build import VERSION
from meshctl.observe.dashboard import EVENTS_SHOWN
from tests import meshbuilder
from tests.helpers_mesh import apply_yaml, start_control_plane, wait_for
from tests.hookserver import hook_server_thread
from tests.observe_harness import (
    REPO,
    TOKEN,
    ObservedMesh,
    Traffic,
    send,
    start_observed_mesh,
    wait_until,
)
from tests.resources import destination_policy, documents, route
from tests.tcp_observe_harness import Mesh, tcp_mesh
from tests.test_canary_kind_mesh import KindMesh
from tests.tools import required_tool

OUTPUT = REPO / "test-output"


def chromium() -> str:
    return required_tool("chromium", "chromium-browser", "google-chrome")


class Page:
    """A DevTools protocol session on one page target."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=15)
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                result: dict[str, Any] = msg["result"]
                return result

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Re-evaluate until truthy (the page refreshes itself every 2 s)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    value = await self.evaluate(expression)
                    if value:
                        return value
                    await asyncio.sleep(0.2)  # poll interval, bounded by the timeout
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedMesh]:
    m = start_observed_mesh(Path(tmp_path_factory.mktemp("dash")))
    apply(m, 99, 1)
    yield m
    m.close()


def apply(mesh: ObservedMesh, v1: int, v2: int, *, v2_first: bool = False) -> None:
    import urllib.request

    split = {"v2": v2, "v1": v1} if v2_first else {"v1": v1, "v2": v2}
    text = documents(destination_policy("reviews"), route("reviews", split))
    req = urllib.request.Request(mesh.url + "/api/v1/apply", data=text.encode(),
                                 method="POST", headers={"Authorization": f"Bearer {TOKEN}",
                                                         "Content-Type": "application/yaml"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200


@pytest.fixture
async def page(tmp_path: Path) -> AsyncIterator[Page]:
    profile = tmp_path / "profile"
    proc = subprocess.Popen([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                             "--disable-background-networking", "--disable-component-update",
                             "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                             "--remote-debugging-port=0", "--window-size=1400,1250",
                             "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = profile / "DevToolsActivePort"
        await asyncio.to_thread(wait_until, lambda: port_file.exists()
                                and port_file.read_text().strip(), 30, "chromium DevTools")
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                targets = await resp.json()
            ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
            async with session.ws_connect(ws_url, max_msg_size=0) as ws:
                yield Page(ws)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def test_dashboard_shows_graph_and_route_shift(mesh: ObservedMesh, page: Page) -> None:
    """The page draws the services and edges, shows reviews v1 99% / v2 1%, then 50/50 after a
    shift; a screenshot is saved under test-output/."""
    pp, rv = mesh.proxies["productpage"], mesh.proxies["reviews"]
    # a sidecar whose app fails its probe (not scraped: no admin address)
    mesh.extra.append({"name": "ratings-v1", "service": "ratings", "version": "v1",
                       "synced": True, "nack": None, "admin": None, "app": "not_serving"})
    with Traffic(lambda: (send(pp, "reviews", "/r"), send(rv, "ratings", "/x"),
                          send(pp, "reviews", "/status/503"))):
        await page.call("Page.enable")
        await page.call("Page.navigate", url=mesh.url + "/dashboard")
        nodes = await page.wait_for(
            "(() => { const n = [...document.querySelectorAll('#graph .node')]"
            ".map(e => e.dataset.service); const e = document.querySelectorAll('#graph .edge');"
            " return n.includes('ratings') && e.length >= 2 ? n : null })()", 30,
            "graph with nodes and edges")
        assert {"productpage", "reviews", "ratings"} <= set(nodes)
        routes = "document.querySelector('#routes').innerText"
        assert "reviews: v1 99% / v2 1%" in await page.wait_for(routes, 10, "routes")
        edge = await page.evaluate("document.querySelector('[data-edge=\"productpage:v1->"
                                   "reviews:v1\"] text').textContent")
        assert "rps" in edge and "%" in edge and "p99" in edge
        await asyncio.to_thread(apply, mesh, 50, 50)
        await page.wait_for(f"{routes}.includes('v1 50% / v2 50%')", 10, "the shift")
        # A subset's colour follows its name, not its position in the split (the Canary
        # panel colours by the same function): listing v2 first leaves both colours alone.
        colours = ("JSON.stringify(Object.fromEntries([...document.querySelectorAll("
                   "'#routes [data-subset]')].map(e => [e.dataset.subset, e.style.background])))")
        before = json.loads(await page.evaluate(colours))
        await asyncio.to_thread(apply, mesh, 50, 50, v2_first=True)
        await page.wait_for(f"{routes}.includes('v2 50% / v1 50%')", 10, "the reordering")
        assert json.loads(await page.evaluate(colours)) == before
        assert len(set(before.values())) == 2  # and v1, v2 stay told apart
        await asyncio.to_thread(apply, mesh, 50, 50)
        await page.wait_for(f"{routes}.includes('v1 50% / v2 50%')", 10, "the shift back")
        # The 1-in-3 failing reviews edge is drawn as unhealthy.
        assert await page.evaluate("document.querySelector('[data-edge=\"productpage:v1->"
                                   "reviews:v1\"] path').getAttribute('class')") == "bad"
        await page.wait_for("document.querySelectorAll('#charts .chart').length >= 2", 10,
                            "charts")
        # each proxy's app probe and the Ami version it runs, as proxy-status has them
        rows = await page.evaluate("JSON.stringify([...document.querySelectorAll("
                                   "'#proxies tr')].map(r => [...r.children]"
                                   ".map(c => c.innerText)))")
        header, *cells = json.loads(rows)
        listed = {row[0]: dict(zip(header, row, strict=True)) for row in cells}
        assert listed["productpage-v1"]["app"] == "✔ serving"
        assert listed["ratings-v1"]["app"] == "✘ not serving"
        # ratings-v1 reports no version: a proxy built before proxies reported it
        assert (listed["productpage-v1"]["proxy version"],
                listed["ratings-v1"]["proxy version"]) == (VERSION, "unknown")
        assert listed["productpage-v1"]["version"] == "v1"  # still the workload's label
        # the policy events, a column per counter (panics: outlier detection's panic mode)
        rows = await page.evaluate("JSON.stringify([...document.querySelectorAll("
                                   "'#counters tr')].map(r => [...r.children]"
                                   ".map(c => c.innerText)))")
        header, *cells = json.loads(rows)
        assert header == ["service", "ejections", "panics", "rate limited", "breaker overflow",
                          "retries", "denied"]
        counted = {row[0]: dict(zip(header, row, strict=True)) for row in cells}
        assert counted["reviews"]["panics"] == "0"
        mesh.extra.clear()
        shot = await page.call("Page.captureScreenshot", format="png")
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "dashboard.png").write_bytes(base64.b64decode(shot["data"]))
    state = json.loads(await page.evaluate("JSON.stringify({u: document.body.dataset.updated})"))
    assert state["u"]


@pytest.fixture(scope="module")
def tcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with tcp_mesh(Path(tmp_path_factory.mktemp("dashtcp"))) as m:
        yield m


async def test_dashboard_shows_tcp_services(tcp: Mesh, page: Page) -> None:
    """With two connections held open to db (a TCP service) through a real `meshctl serve`
    mesh, db's node, the web -> db edge (🔒) and db's chart show its open connections and
    bytes/s; a screenshot is saved under test-output/."""
    connections = [await asyncio.to_thread(tcp.connect) for _ in range(2)]
    try:
        for sock in connections:
            await asyncio.to_thread(sock.sendall, b"ping\n")
        await page.call("Page.enable")
        await page.call("Page.navigate", url=tcp.cp.info["api"] + "/dashboard")
        node = await page.wait_for(
            "(() => { const n = document.querySelector('#graph .node[data-service=\"db\"]');"
            " return n && n.textContent.includes('2 conns') ? n.textContent : null })()", 30,
            "db's node with 2 open connections")
        assert "B/s" in node
        edge = "document.querySelector('[data-edge=\"web:v1->db:v1\"]')"
        # The edge is counted by web's sidecar, the node by db's: each reaches 2 on its own
        # scrape, so the edge is waited for too.
        label = await page.wait_for(
            f"(() => {{ const t = {edge} && {edge}.querySelector('text').textContent;"
            " return t && t.includes('2 conns') ? t : null })()", 30,
            "the web -> db edge with 2 open connections")
        assert "B/s" in label
        assert await page.evaluate(f"{edge}.querySelector('.lock') !== null")  # mTLS
        assert await page.evaluate(f"{edge}.querySelector('path').getAttribute('class')") == "tcp"
        chart = "document.querySelector('#charts .chart[data-service=\"db\"]')"
        fields = await page.wait_for(
            f"{chart} && [...{chart}.querySelectorAll('[data-field]')].map(e => e.dataset.field)",
            10, "db's chart")
        assert fields == ["tcpConnections", "tcpReadBytesPerSec", "tcpWriteBytesPerSec"]
        assert "open connections" in await page.evaluate(f"{chart}.innerText")
        shot = await page.call("Page.captureScreenshot", format="png")
    finally:
        for sock in connections:
            sock.close()
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "dashboard-tcp.png").write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def kind_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KindMesh]:
    with KindMesh(Path(tmp_path_factory.mktemp("dashcanary"))) as m:
        m.build().wait_synced()
        wait_for(lambda: m.call()[0] == 200, 20, "reviews reachable over mTLS")
        with Traffic(m.call):
            yield m


async def test_dashboard_shows_a_declared_canary(kind_mesh: KindMesh, page: Page) -> None:
    """A declared v3 canary on a real `meshctl serve` mesh under traffic: its panel shows the
    service and subsets, the weight bar stepping to 100, the phase, the last analysis against
    the thresholds and the events, live; a screenshot is saved under test-output/."""
    kind_mesh.reset()
    await page.call("Page.enable")
    await page.call("Page.navigate", url=kind_mesh.cp.info["api"] + "/dashboard")
    await page.wait_for("document.body.dataset.updated", 15, "a first refresh")
    assert await page.evaluate("document.getElementById('canary-card').hidden")  # none yet
    await asyncio.to_thread(kind_mesh.declare, "reviews-v3", "v3")
    panel = "document.querySelector('[data-canary=\"default/reviews-v3\"]')"
    # the panel appears and follows the run without a reload (a 1 s interval: the steps
    # between may fall between two of the page's 2 s refreshes)
    await page.wait_for(f"!!{panel}", 30, "the canary's panel")
    await page.wait_for(f"{panel} && {panel}.querySelector('.phase').dataset.phase"
                        " === 'Succeeded'", 60, "the canary promoted")
    text = await page.evaluate(f"{panel}.innerText")
    assert "reviews: v1 → v3" in text and "v3 promoted: v1 0% / v3 100%" in text
    assert await page.evaluate(f"{panel}.querySelector('.bar').innerText") == "v3 100%"
    figures = json.loads(await page.evaluate(
        f"JSON.stringify([...{panel}.querySelectorAll('[data-figure]')]"
        ".map(e => [e.dataset.figure, e.getAttribute('class'), e.innerText]))"))
    assert [(name, cls) for name, cls, _ in figures] == [
        ("requests", "ok"), ("success", "ok"), ("p99", "ok")]
    assert figures[1][2] == "success 100.0% (≥ 99.0%)"
    assert figures[2][2].endswith("(≤ 2000 ms)")
    # The panel lists the run's last EVENTS_SHOWN events, newest first: under load, holds may
    # have pushed the start out of them (the run is over: its events no longer change).
    events = await page.evaluate(f"{panel}.querySelector('.events').innerText")
    shown = [line.rsplit("\t", 1)[-1] for line in events.splitlines()]
    kept = [e["message"] for e in kind_mesh.canary("reviews-v3")["status"]["events"]]
    assert shown == kept[::-1][:EVENTS_SHOWN], (shown, kept)
    assert shown[:2] == ["v3 promoted: v1 0% / v3 100%", "promote: v1 0% / v3 100%"], shown
    assert "start: v1 50% / v3 50%" in shown or len(kept) > EVENTS_SHOWN, kept
    shot = await page.call("Page.captureScreenshot", format="png")
    OUTPUT.mkdir(exist_ok=True)
    (OUTPUT / "dashboard-canary.png").write_bytes(base64.b64decode(shot["data"]))
    assert kind_mesh.meshctl("delete", "canary", "reviews-v3").returncode == 0
    await page.wait_for("document.getElementById('canary-card').hidden", 10, "panel gone")
    kind_mesh.reset()


async def test_dashboard_shows_a_canarys_webhook_answers(kind_mesh: KindMesh,
                                                         page: Page) -> None:
    """A Canary held at its confirm-rollout gate, then rolled back by its rollback hook, whose
    post-rollout hook fails: the panel shows each hook's last answer, coloured by what it
    means for its type (a gate's no: warn; a rollback asked, a failed post-rollout: bad)."""
    kind_mesh.reset()
    await page.call("Page.enable")
    await page.call("Page.navigate", url=kind_mesh.cp.info["api"] + "/dashboard")
    await page.wait_for("document.body.dataset.updated", 15, "a first refresh")
    with hook_server_thread() as hooks:
        hooks.answers.update({"gate": 403, "stop": 404, "cleanup": 500})
        doc = {"apiVersion": "ami.mesh/v1alpha1", "kind": "Canary",
               "metadata": {"name": "hooked"},
               "spec": {"service": "reviews", "stable": "v1", "canary": "v3",
                        "interval": "1s",
                        "webhooks": [{"name": n, "type": t, "url": hooks.url(n)}
                                     for n, t in (("gate", "confirm-rollout"),
                                                  ("stop", "rollback"),
                                                  ("cleanup", "post-rollout"))]}}
        await asyncio.to_thread(apply_yaml, kind_mesh.cp, json.dumps(doc))
        panel = "document.querySelector('[data-canary=\"default/hooked\"]')"
        hook = panel + ".querySelector('[data-webhook=\"{}\"]')"
        await page.wait_for(f"{panel} && !!{hook.format('stop')}", 30,
                            "the rollback hook's answer while Waiting")
        hooks.answers["stop"] = 200
        await page.wait_for(f"!!{hook.format('cleanup')}", 30, "the post-rollout answer")
    shown = json.loads(await page.evaluate(
        f"JSON.stringify([...{panel}.querySelectorAll('[data-webhook]')]"
        ".map(e => [e.dataset.webhook, e.getAttribute('class'), e.innerText]))"))
    assert sorted(shown) == [
        ["cleanup", "bad", "cleanup (post-rollout): HTTP 500"],
        ["gate", "warn", "gate (confirm-rollout): HTTP 403"],
        ["stop", "bad", "stop (rollback): HTTP 200"]]
    assert await page.evaluate(f"{panel}.querySelector('.phase').dataset.phase") == \
        "RolledBack"
    assert kind_mesh.meshctl("delete", "canary", "hooked").returncode == 0
    kind_mesh.reset()


# --- a control plane that hangs, restarts or fails; what the page shows then ----------------
STATUS = "document.getElementById('status').textContent"
STALE = "document.body.dataset.stale === '1'"
NONE = "\u2013"  # the page's "no figure" (an en dash)


async def test_dashboard_says_when_the_control_plane_hangs_or_restarts(
        tmp_path: Path, page: Page) -> None:
    """A real `meshctl serve` mesh under traffic: while the control plane is stopped (SIGSTOP:
    it accepts connections and answers nothing) the page says so within a few seconds and
    marks its figures stale, rather than keep "updated …" and the last numbers as if live;
    once it runs again, and after it is killed and started again on the same address, the page
    comes back live by itself."""
    import signal

    with meshbuilder.Mesh(tmp_path) as m:
        m.control_plane(warmup=0.0)
        m.service("reviews", "v1")
        web = m.sidecar("web")
        m.wait_synced(20)
        with Traffic(lambda: m.get(web, "reviews", "/r")):
            await page.call("Page.enable")
            await page.call("Page.navigate", url=m.cp.info["api"] + "/dashboard")
            await page.wait_for("!!document.querySelector('[data-edge=\"web:v1->reviews:v1\"]')",
                                30, "the web -> reviews edge")
            assert not await page.evaluate(STALE)
            m.cp.proc.send_signal(signal.SIGSTOP)
            try:
                await page.wait_for(STALE, 15, "the page marked stale while the control "
                                    "plane does not answer")
                status = await page.evaluate(STATUS)
                assert "unreachable" in status and "not live" in status, status
            finally:
                m.cp.proc.send_signal(signal.SIGCONT)
            await page.wait_for(f"!({STALE}) && {STATUS}.startsWith('updated')", 20,
                                "the page live again")
            # killed, then started again on the same address and state
            api, grpc = m.cp.info["api"], m.cp.info["grpc"]
            m.cp.kill()
            await page.wait_for(STALE, 15, "the page marked stale while the control plane "
                                "is down")
            assert "unreachable" in await page.evaluate(STATUS)
            m.cp = await asyncio.to_thread(
                start_control_plane, tmp_path, http_port=int(api.rsplit(":", 1)[1]),
                grpc_port=int(grpc.rsplit(":", 1)[1]), warmup=0.0)
            await page.wait_for(f"!({STALE}) && {STATUS}.startsWith('updated')", 30,
                                "the page live again after the restart")


async def test_dashboard_drops_what_is_gone(tmp_path: Path, page: Page) -> None:
    """The page follows things going away: the route splits empty once the last Route is
    deleted; a proxy registered without an admin address is not shown as scraped; a service
    whose only reporting sidecar stopped answering shows no current figure in its chart (not
    the last one, as if live)."""
    mesh = start_observed_mesh(tmp_path)
    try:
        apply(mesh, 99, 1)
        mesh.extra.append({"name": "details-v1", "service": "details", "version": "v1",
                           "synced": True, "nack": None, "admin": None, "app": "serving"})
        pp, rv = mesh.proxies["productpage"], mesh.proxies["reviews"]
        await page.call("Page.enable")
        await page.call("Page.navigate", url=mesh.url + "/dashboard")
        rps = ("(() => { const c = document.querySelector("
               "'#charts .chart[data-service=\"ratings\"] [data-field=\"rps\"] .label');"
               " return c && c.lastChild.textContent })()")
        with Traffic(lambda: (send(pp, "reviews", "/r"), send(rv, "ratings", "/x"))):
            await page.wait_for(f"{rps} && {rps} !== '{NONE}' && {rps} !== '0.0'", 30,
                                "ratings' chart with its requests/s")
        routes = "document.querySelector('#routes').innerText"
        assert "reviews: v1 99% / v2 1%" in await page.wait_for(routes, 10, "routes")
        rows = json.loads(await page.evaluate(
            "JSON.stringify([...document.querySelectorAll('#proxies tr')]"
            ".map(r => [...r.children].map(c => c.innerText)))"))
        header, *cells = rows
        scrape = {row[0]: row[header.index("scrape")] for row in cells}
        assert scrape["productpage-v1"] == "✔"
        assert scrape["details-v1"] == NONE  # no admin address: never scraped
        out = mesh.meshctl("delete", "route", "reviews")
        assert out.returncode == 0, out.stderr
        await page.wait_for(f"!{routes}.includes('reviews:')", 10, "the deleted Route gone")
        # ratings is reported by reviews' sidecar alone: stopped, it is still listed (as a
        # registered sidecar in its grace is) and its scrapes fail
        rv.stop()
        await page.wait_for(f"{rps} === '{NONE}'", 30, "no current figure for ratings")
    finally:
        mesh.close()

"""meshctl stat/edges/top/tap/check/dashboard against real static-mode proxies and the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.api.build import VERSION
from tests.observe_harness import (
    TOKEN,
    ObservedMesh,
    Traffic,
    send,
    start_observed_mesh,
    wait_until,
)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedMesh]:
    m = start_observed_mesh(Path(tmp_path_factory.mktemp("observe")))
    m.wait_scraped()
    pp, rv = m.proxies["productpage"], m.proxies["reviews"]
    for _ in range(16):
        assert send(pp, "reviews", "/reviews/1") == 200
    for _ in range(4):
        assert send(pp, "reviews", "/status/503") == 503
    for _ in range(10):
        assert send(rv, "ratings", "/ratings/1") == 200
    m.wait_scraped(2)
    yield m
    m.close()


def _json(mesh: ObservedMesh, *args: str) -> dict[str, Any]:
    out = mesh.meshctl(*args, "-o", "json")
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_stat_reports_success_rate_per_service(mesh: ObservedMesh) -> None:
    """stat -o json shows reviews at 80% success (16 of 20) and ratings at 100%."""
    rows = {r["service"]: r for r in _json(mesh, "stat", "--window", "5m")["rows"]}
    assert rows["reviews"]["successRate"] == pytest.approx(0.8)
    assert rows["ratings"]["successRate"] == 1.0
    assert rows["reviews"]["rps"] > 0 and rows["reviews"]["p99"] is not None
    assert rows["reviews"]["mtlsShare"] == 0.0


def test_stat_filters_by_service_and_source_and_prints_a_table(mesh: ObservedMesh) -> None:
    """stat SERVICE --from SOURCE keeps only that pair; the table has the columns."""
    body = _json(mesh, "stat", "ratings", "--from", "reviews", "--window", "5m")
    assert [(r["service"], r["version"]) for r in body["rows"]] == [("ratings", "v1")]
    table = mesh.meshctl("stat", "--window", "5m")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["SERVICE", "VERSION", "SUCCESS", "RPS"]
    assert "80.00%" in table.stdout


def test_tables_and_json_end_without_a_blank_line(mesh: ObservedMesh) -> None:
    """Every table and JSON answer ends in one newline, as `get` and `proxy-status` do (they
    ended in two: print() of a text that has its own)."""
    for args in (("stat",), ("stat", "-o", "json"), ("stat", "-o", "wide"), ("edges",),
                 ("edges", "-o", "json"), ("routes", "reviews", "-o", "json"),
                 ("top", "reviews", "--once", "--interval", "1"),
                 ("proxy-config", "productpage-v1", "-o", "json")):
        out = mesh.meshctl(*args, "--window", "5m") if args[0] in ("stat", "edges") \
            else mesh.meshctl(*args)
        assert out.returncode == 0, (args, out.stderr)
        assert out.stdout.endswith("\n") and not out.stdout.endswith("\n\n"), (args, out.stdout)


def test_edges_name_caller_and_callee(mesh: ObservedMesh) -> None:
    """edges lists productpage->reviews and reviews->ratings as plaintext, with success rates."""
    edges = {(e["source"], e["destination"]): e
             for e in _json(mesh, "edges", "--window", "5m")["edges"]}
    assert set(edges) == {("productpage", "reviews"), ("reviews", "ratings")}
    assert edges[("productpage", "reviews")]["successRate"] == pytest.approx(0.8)
    assert not edges[("reviews", "ratings")]["secured"]


def test_tap_streams_matching_requests(mesh: ObservedMesh) -> None:
    """tap reviews --path /tapme -n 3 prints three live requests, all matching the filter."""
    pp = mesh.proxies["productpage"]
    with Traffic(lambda: (send(pp, "reviews", "/tapme/x"), send(pp, "ratings", "/tapme"),
                          send(pp, "reviews", "/other"))):
        out = mesh.meshctl("tap", "reviews", "--path", "/tapme", "-n", "3", "-o", "json")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(events) == 3
    assert {(e["destination"], e["path"], e["method"], e["status"]) for e in events} == {
        ("reviews", "/tapme/x", "GET", 200)}
    assert events[0]["proxy"] == "productpage-v1" and events[0]["source"] == "productpage"


def test_a_tap_event_has_the_documented_fields_and_no_headers(mesh: ObservedMesh) -> None:
    """What docs/observability.md (How tap works) lists, as Linkerd's tap: no header, so a
    header's value (a cookie, a token) never reaches a tap client."""
    import urllib.request

    pp = mesh.proxies["productpage"]

    def call() -> None:
        req = urllib.request.Request(f"http://127.0.0.1:{pp.outbound}/tapped?q=s3cret",
                                     headers={"Host": "reviews", "Cookie": "session=s3cret"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()

    with Traffic(call):
        out = mesh.meshctl("tap", "reviews", "--path", "/tapped", "-n", "1", "-o", "json")
    assert out.returncode == 0, out.stderr
    [event] = [json.loads(line) for line in out.stdout.splitlines()]
    assert set(event) - {"proxy"} == {
        "time", "listener", "reporter", "method", "path", "authority", "status", "reason",
        "duration_ms", "source", "source_version", "destination", "destination_workload",
        "destination_version", "tls", "protocol", "grpc_status"}
    assert event["path"] == "/tapped" and "s3cret" not in out.stdout


def test_a_tap_client_going_away_ends_the_stream_quietly(
        mesh: ObservedMesh, caplog: pytest.LogCaptureFixture) -> None:
    """`meshctl tap ... | head -1`: the reader closes, the API's next write fails; the tap
    ends there, with no 'Error handling request' traceback in the control plane's log."""
    pp = mesh.proxies["productpage"]
    with Traffic(lambda: send(pp, "reviews", "/gone")):
        tap = subprocess.Popen([sys.executable, "-m", "meshctl", "--control-plane", mesh.url,
                                "tap", "reviews", "-o", "json"], stdout=subprocess.PIPE,
                               text=True, env=dict(os.environ, AMI_TOKEN=TOKEN), cwd="/")
        try:
            assert tap.stdout is not None
            assert json.loads(tap.stdout.readline())["path"] == "/gone"
        finally:
            tap.kill()  # the client goes away mid-stream
            tap.wait(10)
        seen = mesh.observer.scraper.scrapes  # (traffic goes on: the API writes again)
        wait_until(lambda: mesh.observer.scraper.scrapes >= seen + 2, 10, "more traffic")
    assert not [r for r in caplog.records if r.name == "aiohttp.server"], caplog.text


def test_tap_needs_the_token(mesh: ObservedMesh) -> None:
    """Without the API token tap is refused with an error, not a stream."""
    out = mesh.meshctl("tap", "reviews", "-n", "1", token=None)
    assert out.returncode != 0
    assert "Bearer" in out.stderr


def test_top_once_shows_the_busiest_path(mesh: ObservedMesh) -> None:
    """top --once aggregates a short tap by path, busiest first."""
    pp = mesh.proxies["productpage"]
    with Traffic(lambda: (send(pp, "reviews", "/busy"), send(pp, "reviews", "/busy"),
                          send(pp, "reviews", "/quiet"))):
        out = mesh.meshctl("top", "reviews", "--once", "--interval", "1.5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["DESTINATION", "METHOD", "PATH"]
    assert lines[1].split()[:3] == ["reviews", "GET", "/busy"]


def test_check_groups_and_hints(mesh: ObservedMesh) -> None:
    """check passes on a healthy mesh, then fails with a hint once a proxy NACKs."""
    ok = mesh.meshctl("check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "✔ control plane reachable" in ok.stdout and "✘" not in ok.stdout
    mesh.extra.append({"name": "details-v1", "service": "details", "synced": False,
                       "nack": "routes[0]: bad regex", "admin": None,
                       "proxyVersion": VERSION})
    try:
        bad = mesh.meshctl("check")
    finally:
        mesh.extra.clear()
    assert bad.returncode == 1
    assert "✘ every proxy synced: details-v1" in bad.stdout
    assert "✘ no NACKs: details-v1: routes[0]: bad regex" in bad.stdout
    assert bad.stdout.count("hint:") == 2


def test_check_reports_an_unreachable_control_plane(mesh: ObservedMesh) -> None:
    """With nothing listening, check prints ✘ for reachability with a hint and exits 1."""
    from tests.proxyharness import free_port

    out = ObservedMesh(mesh.backends, {}, mesh.observer, mesh.store,
                       f"http://127.0.0.1:{free_port()}").meshctl("check")
    assert out.returncode == 1
    assert "✘ control plane reachable" in out.stdout and "hint: start it" in out.stdout


def test_dashboard_prints_the_url_that_serves_the_page(mesh: ObservedMesh) -> None:
    """dashboard prints <url>/dashboard and that URL serves the HTML page."""
    import urllib.request

    out = mesh.meshctl("dashboard")
    assert out.stdout.strip() == mesh.url + "/dashboard"
    with urllib.request.urlopen(out.stdout.strip(), timeout=5) as resp:
        assert b'id="graph"' in resp.read()


def test_dashboard_open_without_a_browser_says_so(mesh: ObservedMesh) -> None:
    """--open where no browser can start (BROWSER names none, as on a server) still prints
    the URL, exit 0, and says on stderr that nothing was opened."""
    env = dict(os.environ, BROWSER="/nonexistent/browser")
    out = subprocess.run([sys.executable, "-m", "meshctl", "--control-plane", mesh.url,
                          "dashboard", "--open"], capture_output=True, text=True, timeout=30,
                         env=env)
    assert (out.returncode, out.stdout.strip()) == (0, mesh.url + "/dashboard"), out
    assert "no web browser could be started here" in out.stderr, out.stderr
    port = mesh.url.rsplit(":", 1)[1]
    assert f"ssh -L {port}:127.0.0.1:{port} HOST" in out.stderr, out.stderr


def test_top_and_tap_survive_a_hung_sidecar(mesh: ObservedMesh) -> None:
    """A sidecar that accepts connections but never answers (here: SIGSTOPped) must not turn
    top and tap into errors: the other sidecars' requests are still shown."""
    import signal

    pp, rv = mesh.proxies["productpage"], mesh.proxies["reviews"]
    assert rv.proc is not None
    rv.proc.send_signal(signal.SIGSTOP)
    try:
        with Traffic(lambda: send(pp, "reviews", "/while-hung")):
            top = mesh.meshctl("top", "reviews", "--once", "--interval", "1")
            tap = mesh.meshctl("tap", "reviews", "--path", "/while-hung", "-n", "2", "-o", "json")
    finally:
        rv.proc.send_signal(signal.SIGCONT)
    assert top.returncode == 0, top.stderr
    assert "/while-hung" in top.stdout
    assert tap.returncode == 0, tap.stderr
    assert [json.loads(line)["path"] for line in tap.stdout.splitlines()] == ["/while-hung"] * 2


def test_proxy_config_shows_what_a_sidecar_runs(mesh: ObservedMesh) -> None:
    """proxy-config NAME: the routes and endpoints productpage's sidecar compiled, fetched from
    its admin listener through the control plane; -o json is the sidecar's own dump."""
    dump = _json(mesh, "proxy-config", "productpage-v1")
    assert dump["snapshot"]["node"]["service"] == "productpage"
    reviews = dump["snapshot"]["services"]["reviews"]["endpoints"][0]["address"]
    table = mesh.meshctl("proxy-config", "productpage-v1")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"Config version:  {dump['version']}"
    assert "Node:            default/productpage (version=v1)" in lines
    endpoint_row = next(line.split() for line in lines if line.startswith("reviews ")
                        and f":{reviews['port']}" in line)
    assert endpoint_row[:3] == ["reviews", f"127.0.0.1:{reviews['port']}", "v1"]
    assert any(line.split()[:3] == ["reviews", "-", "*"] for line in lines)  # no Route: all


def test_proxy_config_errors(mesh: ObservedMesh) -> None:
    unknown = mesh.meshctl("proxy-config", "nobody-v1")
    assert unknown.returncode == 1 and "no proxy named 'nobody-v1'" in unknown.stderr
    typo = mesh.meshctl("proxy-config", "productpage-v1-15101")
    assert typo.returncode == 1 and typo.stderr.endswith("; did you mean productpage-v1?\n"), \
        typo.stderr
    no_token = mesh.meshctl("proxy-config", "productpage-v1", token=None)
    assert no_token.returncode == 1 and "Bearer" in no_token.stderr

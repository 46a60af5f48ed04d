"""TCP services in `meshctl stat`, `edges`, `tap` and `check` from a real `meshctl serve`: a real
TCP server behind an `--app-protocol tcp` sidecar, reached through a caller's `--tcp-upstream`
port over mTLS, next to an HTTP service, with real connections held open through them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.observe.tapfanin import top_rows
from proxy.tap import TapFilter
from tests.helpers_mesh import ROOT, all_synced, http_get, start_sidecar, wait_for
from tests.tcp_observe_harness import TIMEOUT, Mesh, start_tcp_app, tcp_mesh

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with tcp_mesh(Path(tmp_path_factory.mktemp("tcpobs"))) as m:
        yield m


def test_stat_shows_open_connections_and_bytes_of_a_tcp_service(mesh: Mesh) -> None:
    """Two connections held open through the mesh: stat shows db with 2 open connections and
    the bytes read and written (JSON, table and wide table), "-" for its HTTP figures, and
    reviews beside it with its requests and "-" for TCP; closing one connection leaves 1."""
    assert http_get(f"http://{mesh.web.info['outbound']}/", {"Host": "reviews"})[0] == 200
    first, second = mesh.connect(), mesh.connect()
    try:
        for sock in (first, second):
            sock.sendall(b"x" * 999 + b"\n")
            echoed = b""
            while len(echoed) < 1000:
                echoed += sock.recv(65536)

        def db_row(expected: int) -> dict[str, Any] | None:
            rows = {r["service"]: r for r in mesh.json("stat", "--window", "5m")["rows"]}
            db = rows.get("db")
            # once a scrape saw all the bytes: read, what callers sent (2 x 1000); written,
            # the banners and the echo (2 x 14 + 2 x 1000); and reviews' request, which its own
            # sidecar reports (scraped on its own schedule, so it may come after db's figures)
            return rows if (db and db["tcpConnections"] == expected
                            and 0 < db["tcpReadBytesPerSec"] < db["tcpWriteBytesPerSec"]
                            and "reviews" in rows) else None

        rows = wait_for(lambda: db_row(2), 30,
                        "db with 2 open connections and their bytes, and reviews", interval=0.5)
        db, reviews = rows["db"], rows["reviews"]
        assert db["version"] == "v1"
        assert db["rps"] == 0 and db["successRate"] is None and db["mtlsShare"] is None
        assert reviews["successRate"] == 1.0 and reviews["tcpConnections"] is None

        table = mesh.meshctl("stat", "--window", "5m")
        assert table.returncode == 0, table.stderr
        lines = table.stdout.splitlines()
        assert lines[0].split() == ["SERVICE", "VERSION", "SUCCESS", "RPS", "P50", "P95", "P99",
                                    "MTLS", "TCP_CONN"]
        cells = {line.split()[0]: line.split() for line in lines[1:] if line}
        assert cells["db"] == ["db", "v1", "-", "-", "-", "-", "-", "-", "2"]
        assert cells["reviews"][2] == "100.00%" and cells["reviews"][-1] == "-"
        wide = mesh.meshctl("stat", "db", "--window", "5m", "-o", "wide")
        assert wide.returncode == 0, wide.stderr
        head, row = wide.stdout.split("\n")[:2]
        assert head.split()[-3:] == ["TCP_CONN", "READ_BYTES/SEC", "WRITE_BYTES/SEC"]
        assert row.split()[-3] == "2" and all(c.endswith("B/s") for c in row.split()[-2:])

        # edges: the caller's view of the same connections, mTLS; web's sidecar is scraped on
        # its own schedule, so the scrape of it that db_row waited for may have come between
        # the two connections (its view, which edges prefer, then says 1)
        def both_edges() -> dict[tuple[str, str], Any] | None:
            edges = {(e["source"], e["destination"]): e
                     for e in mesh.json("edges", "--window", "5m")["edges"]}
            web_db = edges.get(("web", "db"))
            return edges if (web_db and web_db["tcpConnections"] == 2
                             and ("web", "reviews") in edges) else None

        edges = wait_for(both_edges, 30, "web's view of its 2 connections to db", interval=0.5)
        assert edges[("web", "db")]["secured"]
        assert edges[("web", "reviews")]["tcpConnections"] is None
        edge_table = mesh.meshctl("edges", "--window", "5m")
        assert edge_table.returncode == 0, edge_table.stderr
        web_db = next(line for line in edge_table.stdout.splitlines() if "db (v1)" in line)
        assert "🔒 mTLS" in web_db and web_db.split()[-1] == "2"
        # 🔒 takes two columns on a terminal: the row is padded by display width, so its RPS
        # starts under the RPS header, as an unlocked row's would
        header = edge_table.stdout.splitlines()[0]
        lock_wide = web_db.replace("🔒", "##")
        assert lock_wide.index(" -", lock_wide.index("mTLS")) + 1 == header.index("RPS"), \
            edge_table.stdout

        first.shutdown(socket.SHUT_WR)
        while first.recv(65536):  # the server's `bye`, then its FIN
            pass
        first.close()
        wait_for(lambda: db_row(1), 30, "db with 1 open connection", interval=0.5)
        by_caller = mesh.json("stat", "db", "--from", "web", "--window", "5m")["rows"]
        assert [(r["service"], r["tcpConnections"]) for r in by_caller] == [("db", 1)]
    finally:
        first.close()
        second.close()


def test_check_warns_when_the_sidecars_of_a_service_disagree_on_tcp(mesh: Mesh) -> None:
    """Two sidecars of `cache`, one `--app-protocol tcp` and one not: `meshctl check` names the
    service and both proxies (a warning: exit 0); the mesh before had no such warning."""
    def passing() -> subprocess.CompletedProcess[str] | None:
        """`meshctl check` once it passes (a push still in flight fails `synced` for a
        moment on a busy machine; that is not what this test is about)."""
        out = mesh.meshctl("check")
        return out if out.returncode == 0 else None

    before = wait_for(passing, 20, "meshctl check passing")
    assert "✔ one protocol per service" in before.stdout
    app = start_tcp_app(mesh.tmp, "cache")
    tcp = start_sidecar(mesh.tmp, mesh.cp.info["grpc"], "cache", "v1", app=app.info["address"],
                        extra=["--app-protocol", "tcp"])
    http = start_sidecar(mesh.tmp, mesh.cp.info["grpc"], "cache", "v2", app=app.info["address"])
    try:
        wait_for(lambda: all_synced(mesh.cp, {tcp.info["name"], http.info["name"]}), 20,
                 "cache sidecars synced")
        out = wait_for(passing, 20, "meshctl check passing with the cache sidecars")
        assert (f"‼ one protocol per service: cache: tcp on {tcp.info['name']}, "
                f"http on {http.info['name']}") in out.stdout
        assert "--app-protocol" in out.stdout and "Passed with warnings." in out.stdout
    finally:
        for proc in (http, tcp, app):
            proc.stop()


def test_tap_shows_each_tcp_connection_as_it_ends(mesh: Mesh) -> None:
    """`meshctl tap db` streams one event per connection from each sidecar (web's as source,
    db's as destination) with the bytes each way; a path filter leaves connections out, and
    `top`, which ranks paths, ignores them."""
    stop = threading.Event()

    def connections() -> None:
        while not stop.is_set():
            with mesh.connect() as sock:
                sock.sendall(b"ping\n")
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass

    env = dict(os.environ, AMI_TOKEN=mesh.cp.info["token"])
    tap = subprocess.Popen([sys.executable, "-m", "meshctl", "--control-plane",
                            mesh.cp.info["api"], "tap", "db", "-o", "json"],
                           stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    sender = threading.Thread(target=connections, daemon=True)
    sender.start()
    seen: dict[str, dict[str, Any]] = {}
    deadline = threading.Timer(30, tap.kill)  # ends the blocking reads below if need be
    deadline.start()
    try:
        assert tap.stdout is not None
        for line in tap.stdout:  # until an event from each sidecar
            event = json.loads(line)
            seen.setdefault(event["reporter"], event)
            if len(seen) == 2:
                break
        text = mesh.meshctl("tap", "db", "-n", "1")
    finally:
        deadline.cancel()
        tap.kill()
        tap.wait(10)
        stop.set()
        sender.join(TIMEOUT)
    assert text.returncode == 0, text.stderr
    assert "web -> db(v1) TCP :received=5B sent=25B duration=" in text.stdout
    assert set(seen) == {"source", "destination"}, "no event from one of the sidecars"
    for reporter, event in seen.items():
        assert event["protocol"] == "TCP" and event["method"] is None, event
        assert (event["source"], event["destination"], event["destination_version"]) == (
            "web", "db", "v1")
        # 5 bytes to db; its banner (14), the echo (5) and `bye 5` (6) back
        assert (event["bytes_received"], event["bytes_sent"]) == (5, 25), event
        assert event["tls"] == "mutual_tls" and event["reason"] == "-"
        assert event["proxy"].startswith("web-" if reporter == "source" else "db-")

    with_path = TapFilter(service="db", path="/")
    assert not with_path.matches({**seen["source"]})
    assert TapFilter(service="db").matches(seen["source"])
    assert top_rows(list(seen.values())) == []

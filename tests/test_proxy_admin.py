"""The proxy's admin listener, metrics, access log and shutdown, against a real process."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.proxyharness import (
    Backends,
    ProxyProcess,
    RawBackend,
    at_eof,
    eventually,
    free_port,
    get,
    metric_value,
    read_head,
    read_request,
    read_response,
    roundtrip,
)
from tests.tools import required_tool


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("admin"), {"echo": [echo], "down": [free_port()]},
                     args=("--access-log", "on")).start()
    yield p
    p.stop()


async def test_health_ready_config_dump_and_stats(proxy: ProxyProcess) -> None:
    """`/healthz`, `/ready`, `/config_dump` and `/stats` answer with JSON describing the proxy."""
    status, body = await proxy.aget("/healthz")
    assert (status, json.loads(body)) == (200, {"status": "alive"})
    status, body = await proxy.aget("/ready")
    assert status == 200 and json.loads(body)["config_applied"] is True
    status, body = await proxy.aget("/config_dump")
    dump = json.loads(body)
    assert status == 200 and dump["version"] == "test-1"
    assert dump["listeners"]["outbound"] == f"127.0.0.1:{proxy.outbound}"
    assert "echo" in dump["snapshot"]["services"]
    assert "locality" not in dump  # no locality balancing: the dump is as it was
    await roundtrip(proxy.outbound, get("echo", "/count-me"))
    stats = await proxy.stats()
    assert stats["requests"] >= 1 and stats["config_version"] == "test-1"
    assert stats["access_log"] is True and isinstance(stats["upstream_pools"], list)


async def test_request_metrics_use_istio_labels(proxy: ProxyProcess) -> None:
    """A forwarded request and a local reply are both counted, with the reason in response_flags."""
    await roundtrip(proxy.outbound, get("echo", "/m"))
    await roundtrip(proxy.outbound, get("nowhere", "/m"))
    text = await proxy.metrics()
    ok = {"reporter": "source", "source_workload": "client", "source_version": "v1",
          "destination_service": "echo", "destination_version": "v1", "response_code": "200",
          "response_flags": "-", "connection_security_policy": "none"}
    assert metric_value(text, "ami_requests_total", **ok) >= 1
    # Unrouted, yet the caller is known: this sidecar's own workload (as Istio's BlackHole).
    assert metric_value(text, "ami_requests_total", response_code="404",
                        response_flags="no_route", source_workload="client",
                        source_version="v1", destination_service="nowhere") >= 1
    assert metric_value(text, "ami_request_duration_seconds_count", **ok) >= 1
    assert metric_value(text, "ami_response_bytes_count", **ok) >= 1
    assert metric_value(text, "ami_downstream_connections_total", listener="outbound") >= 2


async def test_metrics_pass_promtool(proxy: ProxyProcess) -> None:
    """The exposition is valid for `promtool check metrics` (skipped if promtool is absent)."""
    promtool = required_tool("promtool")
    await roundtrip(proxy.outbound, get("echo", "/p"))
    text = await proxy.metrics()
    result = await asyncio.to_thread(subprocess.run, [promtool, "check", "metrics"],
                                     input=text.encode(), capture_output=True, timeout=30)
    report = (result.stdout.decode() + result.stderr.decode()).strip()
    assert result.returncode == 0 and not report, report


@pytest.mark.parametrize(("raw", "status", "reason"), [
    (get("nowhere", "/"), 404, "no_route"),
    (get("down", "/"), 503, "upstream_connect_failure"),
    (b"GET / HTTP/1.1\r\n\r\n", 400, "bad_request"),
    (get("echo", "/" + "a" * 9000), 414, "uri_too_long"),
    (b"CONNECT a:1 HTTP/1.1\r\nHost: a:1\r\n\r\n", 405, "method_not_allowed"),
])
async def test_local_replies_say_why(proxy: ProxyProcess, raw: bytes, status: int,
                                     reason: str) -> None:
    """Every locally generated response carries x-ami-reason and names it in the body."""
    resp = await roundtrip(proxy.outbound, raw)
    assert (resp.status, resp.header("x-ami-reason")) == (status, reason)
    assert resp.body.startswith(reason.encode() + b":")
    assert metric_value(await proxy.metrics(), "ami_requests_total", response_flags=reason,
                        source_workload="client") >= 1  # the caller is this sidecar's app


async def test_access_log_lines_are_json(proxy: ProxyProcess) -> None:
    """With `--access-log on` each request is one JSON line on stdout with status and reason,
    and the wall-clock time it started (RFC 3339, UTC)."""
    sent = time.time()
    await roundtrip(proxy.outbound, get("echo", "/logged", "X-Request-Id: log-1\r\n"))
    await roundtrip(proxy.outbound, get("nowhere", "/logged"))

    def lines() -> list[dict[str, Any]]:
        return [json.loads(x) for x in proxy.stdout().splitlines() if x.startswith("{")]

    await eventually(lambda: any(x.get("path") == "/logged" and x["status"] == 404
                                 for x in lines()))
    ok = next(x for x in lines() if x.get("request_id") == "log-1")
    assert (ok["method"], ok["path"], ok["status"], ok["reason"]) == ("GET", "/logged", 200, "-")
    assert ok["authority"] == "echo" and ok["listener"] == "outbound"
    assert ok["client_address"] == "127.0.0.1"  # the caller (the app, on the outbound)
    started = datetime.strptime(ok["start_time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    assert ok["start_time"].endswith("Z") and len(ok["start_time"]) == 24
    assert sent - 0.001 <= started <= time.time()  # (the log keeps whole milliseconds)
    assert next(x for x in lines() if x["status"] == 404)["reason"] == "no_route"


async def test_local_replies_count_the_body_they_send(proxy: ProxyProcess) -> None:
    """A reply the proxy makes itself has a body (`no_route: ...`): bytes_sent in the access
    log and ami_response_bytes count it, as for an upstream's body."""
    before = metric_value(await proxy.metrics(), "ami_response_bytes_sum",
                          response_flags="no_route")
    resp = await roundtrip(proxy.outbound, get("nowhere", "/bytes-of-a-local-reply"))
    assert resp.status == 404 and resp.body

    def line() -> dict[str, Any] | None:
        return next((json.loads(x) for x in proxy.stdout().splitlines()
                     if x.startswith("{") and "/bytes-of-a-local-reply" in x), None)
    await eventually(lambda: line() is not None)
    assert line()["bytes_sent"] == len(resp.body)  # type: ignore[index]
    after = metric_value(await proxy.metrics(), "ami_response_bytes_sum",
                         response_flags="no_route")
    assert after - before == len(resp.body)


def _named_app(name: str) -> Any:
    """Answers with its own name and the x-request-id it received."""
    from aiohttp import web

    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"name": name, "rid": request.headers.get("x-request-id")})

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def test_access_log_names_the_endpoint_used_and_the_request_id_sent(
        tmp_path: Path, backends: Backends) -> None:
    """Two endpoints behind one service: each access-log line's `upstream` is the endpoint that
    answered (not the subset's first), and `request_id` is the id the proxy generated and sent
    upstream when the client sent none (the id every later hop logs)."""
    ports = {name: backends.aiohttp(_named_app(name)) for name in ("a", "b")}
    proxy = ProxyProcess(tmp_path, {"pair": list(ports.values())},
                         args=("--access-log", "on")).start()
    try:
        answers: list[dict[str, Any]] = []
        # Until both endpoints have served (the balancer's choice between two idle endpoints
        # is random: four requests all went to one of them one run in eight).
        while {a["name"] for a in answers} != {"a", "b"}:
            assert len(answers) < 40, "one endpoint served every request"
            resp = await roundtrip(proxy.outbound, get("pair", f"/pair/{len(answers):02d}"))
            assert resp.status == 200
            answers.append(json.loads(resp.body))

        def lines() -> list[dict[str, Any]]:
            return [json.loads(x) for x in proxy.stdout().splitlines()
                    if x.startswith("{") and "/pair/" in x]
        await eventually(lambda: len(lines()) == len(answers))
        for line, answer in zip(sorted(lines(), key=lambda x: x["path"]), answers, strict=True):
            assert line["upstream"] == f"127.0.0.1:{ports[answer['name']]}"
            assert answer["rid"] and line["request_id"] == answer["rid"]
    finally:
        proxy.stop()


async def test_a_client_gone_mid_body_is_not_a_complete_response(
        tmp_path: Path, backends: Backends) -> None:
    """The client resets the connection halfway through a streamed body: the access log and the
    metrics say `downstream_disconnect` (with the 200 already sent), not `-` as for a response
    delivered whole, and the connection gauge returns to 0."""
    import socket
    import struct

    async def stream(_b: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1000)
        await writer.drain()
        await reader.read()  # the rest never comes: the proxy drops this upstream

    raw = backends.raw(stream)
    proxy = ProxyProcess(tmp_path, {"stream": [raw.port]}, args=("--access-log", "on")).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        writer.write(get("stream", "/cut"))
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(500)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST: gone for good, not a half-close

        def logged() -> list[dict[str, Any]]:
            return [json.loads(x) for x in proxy.stdout().splitlines()
                    if x.startswith("{") and '"/cut"' in x]
        await eventually(lambda: bool(logged()))
        [line] = logged()
        assert (line["status"], line["reason"]) == (200, "downstream_disconnect")
        text = await proxy.metrics()
        assert metric_value(text, "ami_requests_total", destination_service="stream",
                            response_code="200", response_flags="downstream_disconnect") == 1
        assert metric_value(text, "ami_requests_total", destination_service="stream",
                            response_flags="-") == 0
        assert metric_value(text, "ami_downstream_connections_active", listener="outbound") == 0
    finally:
        proxy.stop()


@pytest.mark.parametrize(("raw", "status", "reason"), [
    (b"GET /x HTTP/1.1\r\nHost: echo\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400, "request_smuggling"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: echo\r\n\r\n", 414, "uri_too_long"),
])
async def test_rejected_input_is_in_the_access_log(proxy: ProxyProcess, raw: bytes, status: int,
                                                   reason: str) -> None:
    """A request refused before it was understood still gets its access-log line and word."""
    resp = await roundtrip(proxy.outbound, raw)
    assert (resp.status, resp.header("x-ami-reason")) == (status, reason)

    def logged() -> bool:
        return any(json.loads(x).get("reason") == reason and json.loads(x)["status"] == status
                   for x in proxy.stdout().splitlines() if x.startswith("{"))
    await eventually(logged)


async def test_unrouted_hosts_named_in_metrics_are_bounded(proxy: ProxyProcess) -> None:
    """An outbound listener names the host of a `no_route` request (the app asked for a
    service that is not there), up to 100 distinct hosts; later ones count as `unknown`, so
    an app trying names cannot grow the metrics without end."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    for i in range(120):
        writer.write(get(f"missing-{i}", "/"))
        resp = await asyncio.wait_for(read_response(reader), 10)
        assert (resp.status, resp.header("x-ami-reason")) == (404, "no_route")
    writer.close()
    named = set(re.findall(r'^ami_requests_total\{[^}]*destination_service="([^"]+)"'
                           r'[^}]*response_flags="no_route"', await proxy.metrics(), flags=re.M))
    assert "missing-0" in named and "missing-119" not in named
    assert len(named - {"unknown"}) == 100 and "unknown" in named


async def test_sigterm_drains_in_flight_requests(tmp_path: Path, echo: int) -> None:
    """SIGTERM: /ready turns 503, the in-flight slow request completes, the process exits 0."""
    proxy = ProxyProcess(tmp_path, {"echo": [echo]}).start()
    try:
        slow = asyncio.create_task(roundtrip(proxy.outbound, get("echo", "/slow?s=1.5")))
        await eventually(lambda: _in_flight(proxy) >= 1)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        ready_codes: list[int] = []

        async def ready_is_503() -> None:
            ready_codes.append((await proxy.aget("/ready"))[0])

        while not ready_codes or ready_codes[-1] != 503:
            await ready_is_503()
        resp = await asyncio.wait_for(slow, 10)
        assert (resp.status, resp.body) == (200, b"slow done")
        assert await asyncio.to_thread(proxy.proc.wait, 10) == 0
    finally:
        proxy.stop()


async def test_a_request_cut_at_the_drain_deadline_says_so(tmp_path: Path, echo: int) -> None:
    """A request still in flight at --drain-timeout is closed with the process, and its log
    line and metrics say `drain_timeout`, not that the client went away."""
    proxy = ProxyProcess(tmp_path, {"echo": [echo]},
                         args=("--access-log", "on", "--drain-timeout", "1")).start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        writer.write(get("echo", "/slow?s=30"))
        await eventually(lambda: _in_flight(proxy) >= 1)
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        assert await at_eof(reader, 10)  # closed at the deadline, with no answer
        writer.close()
        assert await asyncio.to_thread(proxy.proc.wait, 10) == 0
        lines = [json.loads(x) for x in proxy.stdout().splitlines() if x.startswith("{")]
        cut = [x for x in lines if x.get("path") == "/slow"]
        assert [(x["reason"], x["status"]) for x in cut] == [("drain_timeout", 0)]
    finally:
        proxy.stop()


def _in_flight(proxy: ProxyProcess) -> int:
    _, body = proxy.get("/stats")
    return sum(p["active_requests"] for p in json.loads(body)["upstream_pools"])


async def test_post_shutdown_exits_cleanly(tmp_path: Path, echo: int) -> None:
    """`POST /shutdown` answers 202 and the proxy exits with status 0."""
    proxy = ProxyProcess(tmp_path, {"echo": [echo]}).start()
    try:
        status, body = await proxy.aget("/shutdown", method="POST")
        assert (status, json.loads(body)) == (202, {"status": "draining"})
        assert proxy.proc is not None
        assert await asyncio.to_thread(proxy.proc.wait, 10) == 0
    finally:
        proxy.stop()


def test_reason_table_in_the_docs_matches_the_code() -> None:
    """docs/proxy.md lists exactly the reason words the proxy can send, with their status."""
    from proxy.reasons import NOT_SENT, REASONS

    text = (Path(__file__).resolve().parent.parent / "docs" / "proxy.md").read_text()
    section = text.split("## Reason words", 1)[1].split("\n## ", 1)[0]
    documented = {m[0]: m[1] for m in re.findall(r"^\| `([a-z_]+)` \| (\d+|\(none\)) \|", section,
                                                   flags=re.M)}
    assert set(documented) == set(REASONS)
    for word, (status, _) in REASONS.items():
        expected = "(none)" if word in NOT_SENT else str(status)  # nothing sent
        assert documented[word] == expected, word


async def test_draining_keeps_an_idle_keep_alive_connection_for_its_next_request(
        tmp_path: Path, echo: int) -> None:
    """SIGTERM does not close a keep-alive connection that has just been used: the client's
    next request on it (it may be writing it this very moment) is answered, with
    `connection: close`, then the connection closes and the proxy exits 0 (zero connections)."""
    proxy = ProxyProcess(tmp_path, {"echo": [echo]}).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(get("echo", "/first"))
        first = await asyncio.wait_for(read_response(reader), 10)
        assert first.status == 200 and first.header("connection") is None
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        while (await proxy.aget("/ready"))[0] != 503:
            pass  # each /ready is a round trip; the drain has started once it says 503
        writer.write(get("echo", "/second"))
        second = await asyncio.wait_for(read_response(reader), 10)
        assert (second.status, second.header("connection")) == (200, "close")
        assert await at_eof(reader, 10)
        assert await asyncio.to_thread(proxy.proc.wait, 10) == 0
    finally:
        writer.close()
        proxy.stop()


async def test_draining_closes_an_idle_connection_and_exits(tmp_path: Path, echo: int) -> None:
    """A keep-alive client that sends nothing more is closed while draining (well before the
    20 s drain deadline the test waits on), and the proxy then exits 0."""
    proxy = ProxyProcess(tmp_path, {"echo": [echo]}).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(get("echo", "/"))
        assert (await asyncio.wait_for(read_response(reader), 10)).status == 200
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        assert await at_eof(reader, 15)
        assert await asyncio.to_thread(proxy.proc.wait, 10) == 0
    finally:
        writer.close()
        proxy.stop()


async def test_a_response_begun_before_the_drain_does_not_close_the_connection_under_the_client(
        tmp_path: Path, backends: Backends) -> None:
    """The head of a response left with keep-alive, then SIGTERM, then its body: the client
    rightly reuses the connection at once. Its next request must be answered (with
    `connection: close`), not met by a close (a POST there would be lost as 502 upstream_reset
    by a caller's sidecar, since the server may have acted on it)."""
    gate = threading.Event()

    async def head_then_gated_body(raw: RawBackend, reader: asyncio.StreamReader,
                                   writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n")
            await writer.drain()
            if req.target == "/gated":
                await asyncio.to_thread(gate.wait, 10)
            writer.write(b"done")
            await writer.drain()

    upstream = backends.raw(head_then_gated_body)
    proxy = ProxyProcess(tmp_path, {"gated": [upstream.port]}).start()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
    try:
        writer.write(get("gated", "/gated"))
        head = await asyncio.wait_for(read_head(reader), 10)
        assert head is not None and head.header("connection") is None
        assert proxy.proc is not None
        proxy.proc.send_signal(signal.SIGTERM)
        while (await proxy.aget("/ready"))[0] != 503:
            pass  # each /ready is a round trip; the drain has started once it says 503
        gate.set()
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"done"
        writer.write(get("gated", "/next", body=b"order=1", method="POST"))
        nxt = await asyncio.wait_for(read_response(reader), 10)
        assert (nxt.status, nxt.header("connection"), nxt.body) == (200, "close", b"done")
        assert await at_eof(reader, 10)
        assert await asyncio.to_thread(proxy.proc.wait, 10) == 0
    finally:
        gate.set()
        writer.close()
        proxy.stop()


@pytest.fixture(scope="module")
def strict_admin(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[ProxyProcess]:
    """A proxy with a short header timeout and small head limits, which its admin obeys too."""
    p = ProxyProcess(tmp_path_factory.mktemp("admin-limits"), {"echo": [echo]},
                     args=("--header-timeout", "0.5", "--max-request-line", "1024",
                           "--max-header-bytes", "4096")).start()
    yield p
    p.stop()


async def admin_exchange(proxy: ProxyProcess, raw: bytes) -> bytes:
    """Send ``raw`` to the admin listener; everything it answers until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.admin)
    try:
        writer.write(raw)
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_admin_closes_a_slow_request_head(strict_admin: ProxyProcess) -> None:
    """A client that never finishes its request head (slowloris) gets 408 and is closed
    after the header timeout, instead of holding an admin connection forever."""
    answer = await admin_exchange(strict_admin, b"GET /healthz HTTP/1.1\r\nHost: a\r\n")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b'"reason": "request_timeout"' in answer
    silent = await admin_exchange(strict_admin, b"")  # not even a byte
    assert silent.startswith(b"HTTP/1.1 408 "), silent


async def test_admin_refuses_oversized_heads(strict_admin: ProxyProcess) -> None:
    """A request target past --max-request-line gets 414, a header section past
    --max-header-bytes 431: the admin listener buffers no more than the data listeners."""
    long_target = await admin_exchange(
        strict_admin, b"GET /" + b"a" * 2048 + b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert long_target.startswith(b"HTTP/1.1 414 "), long_target
    many_headers = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(60))
    big_head = await admin_exchange(
        strict_admin, b"GET /healthz HTTP/1.1\r\nHost: a\r\n" + many_headers + b"\r\n")
    assert big_head.startswith(b"HTTP/1.1 431 "), big_head
    status, _ = await strict_admin.aget("/healthz")
    assert status == 200  # and the listener still serves


async def test_admin_caps_its_open_connections(strict_admin: ProxyProcess) -> None:
    """Past MAX_ADMIN_CONNECTIONS open at once, a new admin connection gets 503
    too_many_connections; once they close, probes are answered again."""
    from proxy.adminhttp import MAX_ADMIN_CONNECTIONS

    held = [await asyncio.open_connection("127.0.0.1", strict_admin.admin)
            for _ in range(MAX_ADMIN_CONNECTIONS)]
    try:
        answer = await admin_exchange(strict_admin, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"too_many_connections" in answer
    finally:
        for _, writer in held:
            writer.close()
    deadline = asyncio.get_running_loop().time() + 10
    while (status := (await strict_admin.aget("/healthz"))[0]) != 200:
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.05)  # the proxy sees the closes within a few loop turns

"""A proxy's log levels changed at run time (admin `/logging`, proxy/loglevels.py).

A real static proxy started at WARNING: switched to DEBUG through its admin listener, it logs
each request's routing line (ami.proxy.router), its client connections and its upstream
pool's; back at INFO it does not. Bad requests are refused with the valid names, changing
nothing; `reset=true` restores the start-up levels. The rest checks the names themselves.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.loglevels import AMI_LOGGERS, CODEC_LOGGERS, LevelError, LogLevels
from tests.proxyharness import (
    ProxyProcess,
    eventually,
    get,
    metric_value,
    roundtrip,
)

ROUTES = [{"host": "echo", "name": "echo-route", "rules": [
    {"name": "named", "matches": [{"path": {"prefix": "/named"}}], "backends": [{"weight": 100}]},
    {"matches": [{"path": {"prefix": "/"}}], "backends": [{"weight": 100}]},
]}]


@pytest.fixture
def proxy(tmp_path: Path, echo: int) -> Iterator[ProxyProcess]:
    """A proxy per test: each starts from the start-up levels (WARNING)."""
    p = ProxyProcess(tmp_path, {"echo": [echo]}, routes=ROUTES).start()
    yield p
    p.stop()


async def _levels(proxy: ProxyProcess, query: str = "") -> tuple[int, dict[str, Any]]:
    """POST /logging?query (GET without one): status and JSON answer."""
    status, body = await proxy.aget("/logging" + (f"?{query}" if query else ""),
                                    "POST" if query else "GET")
    return status, json.loads(body)


async def _request(proxy: ProxyProcess, path: str) -> None:
    resp = await roundtrip(proxy.outbound, get("echo", path))
    assert resp.status == 200, resp


def _router_lines(proxy: ProxyProcess, path: str) -> list[str]:
    return [line for line in proxy.stderr().splitlines()
            if "ami.proxy.router" in line and f" echo{path} " in line]


async def _wait_router_line(proxy: ProxyProcess, path: str) -> str:
    await eventually(lambda: bool(_router_lines(proxy, path)))
    return _router_lines(proxy, path)[0]


async def test_get_lists_the_loggers_at_their_start_up_level(proxy: ProxyProcess) -> None:
    status, body = await _levels(proxy)
    assert status == 200
    assert body["loggers"] == {**dict.fromkeys(AMI_LOGGERS, "warning"), "h2": "warning",
                               "hpack": "warning"}


async def test_debug_logs_each_request_and_info_stops_it(proxy: ProxyProcess) -> None:
    status, body = await _levels(proxy, "ami.proxy.router=debug")
    assert status == 200
    assert body["loggers"]["ami.proxy.router"] == "debug"
    # each logger is set on its own: the others (its parent too) keep their level
    assert body["loggers"]["ami.proxy"] == body["loggers"]["ami.proxy.pool"] == "warning"

    await _request(proxy, "/named/first")
    line = await _wait_router_line(proxy, "/named/first")
    assert re.search(r"DEBUG ami\.proxy\.router: outbound GET echo/named/first rule=named -> "
                     r"echo endpoint=127\.0\.0\.1:\d+ status=200 reason=- HTTP/1\.1 ", line), line
    # with a named rule, `record` counts it too while it logs (record_rules, then the line)
    assert metric_value(await proxy.metrics(), "ami_route_requests_total", rule="named") == 1
    await _request(proxy, "/other")
    assert "rule=-" in await _wait_router_line(proxy, "/other")

    status, body = await _levels(proxy, "ami.proxy.router=info")
    assert (status, body["loggers"]["ami.proxy.router"]) == (200, "info")
    await _request(proxy, "/quiet")
    # A later request logged at DEBUG again shows the proxy went past /quiet (one event loop,
    # one stderr, in order): /quiet said nothing.
    await _levels(proxy, "ami.proxy.router=debug")
    await _request(proxy, "/marker")
    await _wait_router_line(proxy, "/marker")
    assert _router_lines(proxy, "/quiet") == []
    assert metric_value(await proxy.metrics(), "ami_route_requests_total", rule="named") == 1


async def test_level_debug_sets_all_of_amis_loggers_not_the_codec(proxy: ProxyProcess) -> None:
    status, body = await _levels(proxy, "level=debug")
    assert status == 200
    assert body["loggers"] == {**dict.fromkeys(AMI_LOGGERS, "debug"), "h2": "warning",
                               "hpack": "warning"}
    await _request(proxy, "/everything")
    await _wait_router_line(proxy, "/everything")

    def said(pattern: str) -> bool:
        return re.search(pattern, proxy.stderr()) is not None
    # the client connection opened and (once the client closed it) closed; the pool's
    # connection to echo opened (the proxy's first request: a cold pool)
    await eventually(lambda: said(r"ami\.proxy\.connection: outbound connection from "
                                  r"127\.0\.0\.1 closed \(none\)"))
    assert said(r"ami\.proxy\.connection: outbound connection from 127\.0\.0\.1 opened \(none\)")
    assert said(r"ami\.proxy\.pool: 127\.0\.0\.1:\d+: connection opened \(plaintext\); 1 open")
    # input refused before routing has its line too (no exchange, no `record`)
    smuggled = await roundtrip(proxy.outbound, get("echo", "/x", extra="Transfer-Encoding: "
                                                   "chunked\r\nContent-Length: 3\r\n"))
    assert smuggled.status == 400
    await eventually(lambda: said(r"ami\.proxy\.router: outbound request from 127\.0\.0\.1 "
                                  r"refused before routing: status=400 reason=request_smuggling"))
    # named explicitly, the codec's level changes too; per-logger changes follow `level`
    status, body = await _levels(proxy, "level=error&h2=debug&ami.proxy.tcp=info")
    assert status == 200
    assert body["loggers"]["h2"] == "debug" and body["loggers"]["hpack"] == "warning"
    assert body["loggers"]["ami.proxy.tcp"] == "info"
    assert body["loggers"]["ami.proxy.router"] == "error"


async def test_reset_restores_the_start_up_levels(proxy: ProxyProcess) -> None:
    await _levels(proxy, "level=debug&h2=debug")
    status, body = await _levels(proxy, "reset=true")
    assert status == 200
    assert body["loggers"] == {**dict.fromkeys(AMI_LOGGERS, "warning"), "h2": "warning",
                               "hpack": "warning"}
    await _request(proxy, "/after-reset")
    status, _ = await _levels(proxy, "reset=true&ami.proxy.router=debug")  # reset, then set
    assert status == 200
    await _request(proxy, "/marker")
    await _wait_router_line(proxy, "/marker")
    assert _router_lines(proxy, "/after-reset") == []
    # the change is said at WARNING, so the log shows who turned DEBUG on, and when
    assert "log levels changed from the admin listener: reset, ami.proxy.router=debug" \
        in proxy.stderr()


@pytest.mark.parametrize(("query", "says"), [
    ("level=loud", "level: unknown level 'loud'; levels: debug, info, warning, error, critical"),
    ("ami.proxy.nope=debug", "unknown logger 'ami.proxy.nope'; loggers: ami.proxy, "),
    ("level=debug&ami.proxy.nope=debug", "unknown logger 'ami.proxy.nope'"),  # all or nothing
    ("ami.proxy.tcp=verbose", "ami.proxy.tcp: unknown level 'verbose'"),
    ("reset=yes", "use reset=true"),
    ("", "say what to change"),
])
async def test_bad_input_is_refused_and_changes_nothing(proxy: ProxyProcess, query: str,
                                                        says: str) -> None:
    status, body = await proxy.aget("/logging" + (f"?{query}" if query else ""), "POST")
    assert status == 400
    answer = json.loads(body)
    assert says in answer["error"]
    if "reset" not in query:
        assert answer["levels"] == ["debug", "info", "warning", "error", "critical"]
        assert "ami.proxy.router" in answer["loggers"]
    assert (await _levels(proxy))[1]["loggers"]["ami.proxy"] == "warning"


async def test_only_post_changes_levels(proxy: ProxyProcess) -> None:
    status, body = await proxy.aget("/logging?level=debug", "PUT")
    assert status == 405 and "use GET or POST" in json.loads(body)["error"]
    status, body = await _levels(proxy)  # a GET with a query reads only
    assert body["loggers"]["ami.proxy"] == "warning"


# --- the names (no process) ---------------------------------------------------------------
def test_every_logger_the_proxy_writes_to_is_listed() -> None:
    """A logger added in proxy/ but not to AMI_LOGGERS could not be set at run time."""
    source = Path(__file__).resolve().parent.parent / "proxy"
    named = {m for path in source.rglob("*.py")
             for m in re.findall(r'getLogger\("([^"]+)"\)', path.read_text())}
    assert {"ami.proxy", "ami.proxy.tcp", "ami.proxy.router"} <= named  # the scan finds them
    assert sorted(named - set(AMI_LOGGERS)) == []
    assert not set(AMI_LOGGERS) & set(CODEC_LOGGERS)


def test_parse_and_reset_in_process() -> None:
    levels = LogLevels()
    with pytest.raises(LevelError, match="levels: debug, info"):
        levels.parse({"level": "trace"})
    changes = levels.parse({"level": "DEBUG", "ami.proxy.tcp": "info"})
    assert changes["ami.proxy"] == logging.DEBUG and changes["ami.proxy.tcp"] == logging.INFO
    assert "h2" not in changes and "hpack" not in changes
    before = {n: logging.getLogger(n).level for n in levels.names()}
    called: list[bool] = []
    levels.on_change = lambda: called.append(True)
    try:
        levels.apply({"ami.proxy.pool": logging.DEBUG})
        assert levels.levels()["ami.proxy.pool"] == "debug"
    finally:
        levels.reset()
    assert {n: logging.getLogger(n).level for n in levels.names()} == before
    assert called == [True, True]

"""AuthorizationPolicy AUDIT at a real gateway (`--mode gateway`, static file): what an AUDIT
policy matches is written to the access log with the log off, as a whole line (every field an
ordinary line has, plus `audit_policy`), one line per HTTP/2 stream; a reload adding or
removing the AUDIT policy changes what open connections' next requests write; a header sent
twice is matched as its values joined with ',' (HTTP/1.1 lines and HTTP/2 fields alike)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.h2app import H2Client
from tests.helpers_mesh import wait_for
from tests.proxyharness import ProxyProcess, get, metric_value, roundtrip
from tests.test_proxy_reload import wait_reloads

pytestmark = pytest.mark.timeout(120)

# (a policy selects the gateway by its service, as Istio's by its labels)
AUDIT = [{"name": "edge/audit-admin", "selector": {"service": "client"}, "action": "AUDIT",
          "rules": [{"to": [{"paths": ["/admin/*"]}]}]},
         {"name": "edge/audit-pair", "selector": {"service": "client"}, "action": "AUDIT",
          "rules": [{"when": [{"header": "x-user", "values": ["alice,bob"]}]}]}]


@pytest.fixture
def gateway(tmp_path: Path, echo: int) -> Iterator[tuple[ProxyProcess, int]]:
    proc = ProxyProcess(tmp_path, {"echo": [echo]}, args=("--mode", "gateway"),
                        access_log=False)
    port = proc.listen_as_gateway([{"destination": "echo"}])
    config = yaml.safe_load(proc.config.read_text())
    config["inbound"] = {"authorization": AUDIT}
    proc.config.write_text(yaml.safe_dump(config))
    proc.start()
    yield proc, port
    proc.stop()


def reload_with(proc: ProxyProcess, policies: list[dict[str, Any]], log: bool) -> None:
    config = yaml.safe_load(proc.config.read_text())
    config["inbound"] = {"authorization": policies}
    config["mesh"]["accessLog"] = log
    config.pop("version", None)  # (the version is the content's digest)
    proc.config.write_text(yaml.safe_dump(config))
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)


def lines(proc: ProxyProcess) -> dict[str, dict[str, Any]]:
    return {line["path"]: line for line in (json.loads(x) for x in proc.stdout().splitlines()
                                            if x.startswith("{"))}


def logged(proc: ProxyProcess, path: str) -> dict[str, Any]:
    found: dict[str, Any] = wait_for(lambda: lines(proc).get(path), 10,
                                     f"the access log line of {path}", interval=0.05)
    return found


async def audited(proc: ProxyProcess, policy: str) -> float:
    return metric_value(await proc.metrics(), "ami_authz_decisions_total", policy=policy,
                        action="AUDIT", decision="audited")


async def status(port: int, path: str, extra: str = "") -> int:
    return (await roundtrip(port, get("echo", path, extra=extra))).status


async def test_the_gateway_logs_what_its_audit_policies_match_with_the_log_off(
        gateway: tuple[ProxyProcess, int]) -> None:
    """Log off: an audited request through the gateway gets its line, naming the policy, and
    is counted; an unaudited one writes nothing. `x-user` sent twice matches `alice,bob`."""
    proc, port = gateway
    assert await status(port, "/quiet/1") == 200
    assert await status(port, "/admin/1") == 200
    assert await status(port, "/pair/1", "x-user: alice\r\nx-user: bob\r\n") == 200
    assert await status(port, "/single/1", "x-user: alice\r\n") == 200
    assert logged(proc, "/admin/1")["audit_policy"] == "edge/audit-admin"
    assert logged(proc, "/pair/1")["audit_policy"] == "edge/audit-pair"
    seen = lines(proc)
    assert "/quiet/1" not in seen and "/single/1" not in seen
    assert await audited(proc, "edge/audit-admin") == 1
    assert await audited(proc, "edge/audit-pair") == 1


async def test_http2_streams_each_get_their_own_line(gateway: tuple[ProxyProcess, int]) -> None:
    """On one HTTP/2 connection: the audited streams each write a line, the other none; a
    header in two fields of one HEADERS block is matched joined."""
    proc, port = gateway
    async with H2Client(port) as client:
        answers = await asyncio.gather(
            client.request("echo", "/admin/h2-a"), client.request("echo", "/quiet/h2"),
            client.request("echo", "/admin/h2-b"),
            client.request("echo", "/pair/h2", headers=[("x-user", "alice"),
                                                        ("x-user", "bob")]))
    assert [a.status for a in answers] == [200] * 4
    for path in ("/admin/h2-a", "/admin/h2-b", "/pair/h2"):
        line = logged(proc, path)
        assert (line["protocol"], line["status"]) == ("HTTP/2", 200), line
    assert logged(proc, "/pair/h2")["audit_policy"] == "edge/audit-pair"
    assert "/quiet/h2" not in lines(proc)
    written = [x for x in proc.stdout().splitlines() if x.startswith("{")]
    assert len(written) == 3, written


async def test_a_reload_moves_the_audit_and_open_connections_follow(
        gateway: tuple[ProxyProcess, int]) -> None:
    """An audited line has every field an ordinary line has. With connections open (HTTP/1.1
    keep-alive and HTTP/2): a reload removing the AUDIT policy (log on) writes their next
    requests' lines without the field; one restoring it with the log off writes only the
    audited ones again."""
    proc, port = gateway
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async def h1(path: str) -> int:
            from tests.proxyharness import read_response

            writer.write(get("echo", path))
            return (await asyncio.wait_for(read_response(reader), 10)).status

        async with H2Client(port) as client:
            assert await h1("/admin/before") == 200
            audited_line = logged(proc, "/admin/before")
            reload_with(proc, [], log=True)
            await wait_reloads(proc, "applied", 1)
            assert await h1("/admin/unaudited") == 200
            assert (await client.request("echo", "/admin/h2-unaudited")).status == 200
            plain = logged(proc, "/admin/unaudited")
            assert "audit_policy" not in plain
            assert "audit_policy" not in logged(proc, "/admin/h2-unaudited")
            assert set(audited_line) == set(plain) | {"audit_policy"}, (audited_line, plain)

            reload_with(proc, AUDIT, log=False)
            await wait_reloads(proc, "applied", 2)
            assert await h1("/quiet/after") == 200
            assert await h1("/admin/after") == 200
            assert (await client.request("echo", "/quiet/h2-after")).status == 200
            assert (await client.request("echo", "/admin/h2-after")).status == 200
            assert logged(proc, "/admin/after")["audit_policy"] == "edge/audit-admin"
            assert logged(proc, "/admin/h2-after")["audit_policy"] == "edge/audit-admin"
            seen = lines(proc)
            assert "/quiet/after" not in seen and "/quiet/h2-after" not in seen
    finally:
        writer.close()

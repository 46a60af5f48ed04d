"""The open-file limit: raised at start, and the connection limit fitted under it."""

from __future__ import annotations

import asyncio
import logging
import resource
from pathlib import Path

import pytest

from proxy.fdlimit import PER_CONNECTION, RESERVED, UNLIMITED_CAP, fit_connection_limit
from tests.helpers_mesh import start_control_plane
from tests.proxyharness import (
    ProxyProcess,
    dry_run,
    get,
    read_response,
)


def soft_open_files(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no 'Max open files' in /proc limits")


def test_soft_limit_is_raised_to_the_hard_one(tmp_path: Path, echo: int) -> None:
    proxy = ProxyProcess(tmp_path, {"echo": [echo]}).start(open_files=(64, 4096))
    try:
        assert proxy.proc is not None
        assert soft_open_files(proxy.proc.pid) == 4096
    finally:
        proxy.stop()


async def test_clients_beyond_what_descriptors_hold_get_503_not_resets(
        tmp_path: Path, echo: int) -> None:
    """With 128 descriptors the limit becomes 16: the rest are refused with a 503 and a reason.

    Without the fitting, accept() hits EMFILE near the 110th client and uvloop resets the
    connections that follow, the admin listener's included, without a log line.
    """
    proxy = ProxyProcess(tmp_path, {"echo": [echo]}, args=("--max-connections", "10000"))
    proxy.start(open_files=(128, 128))
    fitted = (128 - RESERVED) // (PER_CONNECTION * 2)
    clients = []
    try:
        for _ in range(150):
            clients.append(await asyncio.open_connection("127.0.0.1", proxy.outbound))
        outcomes: list[str] = []
        for i, (reader, writer) in enumerate(clients):
            writer.write(get("echo", f"/c{i}"))
            try:
                resp = await asyncio.wait_for(read_response(reader), 10)
                outcomes.append(f"{resp.status} {resp.header('x-ami-reason') or ''}".strip())
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                outcomes.append(type(exc).__name__)
        assert outcomes.count("200") == fitted
        assert outcomes.count("503 too_many_connections") == len(clients) - fitted, outcomes
        assert (await proxy.aget("/ready"))[0] == 200  # the admin listener still answers
    finally:
        for _, writer in clients:
            writer.close()
        proxy.stop()
    assert f"using {fitted}" in proxy.stderr()


def test_fit_keeps_a_limit_that_fits_and_says_when_it_lowers_one(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ami.proxy")
    assert fit_connection_limit(10_000, listeners=2, open_files=1 << 20) == 10_000
    assert not caplog.records
    assert fit_connection_limit(10_000, listeners=2, open_files=1024) == (1024 - RESERVED) // 4
    assert fit_connection_limit(10_000, listeners=2, open_files=1024, chosen=False) == 240
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.INFO]
    assert fit_connection_limit(10, listeners=2, open_files=10) == 1  # never zero


@pytest.mark.parametrize("flag", ["--max-connections", "--header-timeout", "--idle-timeout",
                                  "--drain-timeout", "--max-header-bytes"])
def test_limits_must_be_positive(tmp_path: Path, flag: str) -> None:
    done = dry_run(tmp_path, flag, "0")
    assert done.returncode == 2
    assert f"error: {flag} must be greater than 0" in done.stderr


def test_control_plane_raises_its_soft_limit_too(tmp_path: Path) -> None:
    """A stream and a scrape connection per sidecar: 1024 descriptors would cap it at ~500."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))  # inherited by the child
    try:
        control_plane = start_control_plane(tmp_path)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        expected = hard if hard != resource.RLIM_INFINITY else UNLIMITED_CAP
        assert soft_open_files(control_plane.proc.pid) == min(expected, UNLIMITED_CAP)
    finally:
        control_plane.stop()

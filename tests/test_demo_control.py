"""`meshctl demo status/down` and `up --detach` failures, through the run directory."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshctl.demo import control
from meshctl.demo.procs import http_ok, listening, pid_alive
from meshctl.demo.runner import DemoOptions
from meshctl.demo.state import READY, STOPPED, ProcessRecord, RunDir, RunState
from meshctl.demo.supervisor import Timing
from meshctl.demo.topology import Ports
from tests.ports import free_block, free_port
from tests.test_demo_e2e import BLOCK


@pytest.fixture
def orphan(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A listening process the demo 'started' whose supervisor has died (a crash, a kill -9)."""
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 10
    while not http_ok(f"http://127.0.0.1:{port}/"):
        assert time.monotonic() < deadline, "fake server not ready"
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=0.05)  # wakes early if it died
        assert proc.poll() is None, "fake server exited"
    yield proc, port
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_down_without_a_demo_is_a_no_op(tmp_path: Path) -> None:
    """`down` with no state says there is nothing to stop and succeeds (idempotent)."""
    out = io.StringIO()
    assert control.down(RunDir(tmp_path), out) == 0
    assert "nothing to stop" in out.getvalue()


def test_status_without_a_demo_says_so(tmp_path: Path) -> None:
    """`status` with no state reports that the demo is not running, with exit status 1."""
    out = io.StringIO()
    assert control.status(RunDir(tmp_path), out) == 1
    assert "not running" in out.getvalue()


def record(proc: subprocess.Popen[bytes], port: int, log: str) -> ProcessRecord:
    return ProcessRecord("ratings-v1", proc.pid, tuple(str(a) for a in proc.args),  # type: ignore[union-attr]
                         (("app", "127.0.0.1", port),), log)


def test_status_lists_each_process_and_down_stops_leftovers(
        tmp_path: Path, orphan: tuple[subprocess.Popen[bytes], int]) -> None:
    """status shows name, pid, alive, ports and log; down stops what a dead supervisor left."""
    proc, port = orphan
    run_dir = RunDir(tmp_path / "run")
    dead_supervisor = 2 ** 22 + 1  # above the default pid_max: never alive
    run_dir.write(RunState(supervisor=dead_supervisor, status=READY,
                           processes=(record(proc, port, "/x/ratings-v1.log"),)))
    out = io.StringIO()
    assert control.status(run_dir, out) == 1  # supervisor gone
    lines = out.getvalue().splitlines()
    line = next(x for x in lines if x.startswith("ratings-v1"))
    assert f"{proc.pid}" in line and "yes" in line and f"app={port}" in line
    # laid out as meshctl's other tables: three spaces between columns
    assert next(x for x in lines if x.startswith("NAME")).startswith(
        f"NAME         PID{' ' * (len(str(proc.pid)) - 3)}   ALIVE   PORTS")
    assert "/x/ratings-v1.log" in line
    out = io.StringIO()
    assert control.down(run_dir, out) == 0, out.getvalue()
    assert "stopped 1 process; no process and no port left" in out.getvalue()
    assert proc.wait(timeout=5) is not None
    assert not listening(port)
    state = run_dir.read()
    assert state is not None and state.status == STOPPED
    assert control.down(run_dir, io.StringIO()) == 0  # again: still fine


def test_a_reused_pid_is_not_killed(tmp_path: Path,
                                    orphan: tuple[subprocess.Popen[bytes], int]) -> None:
    """A recorded pid whose command line is now another program's is left alone."""
    proc, _ = orphan
    run_dir = RunDir(tmp_path / "run")
    other = ProcessRecord("reviews-v1", proc.pid, ("/usr/bin/python3", "-m", "proxy", "--x"),
                          (), "/x/reviews-v1.log")
    run_dir.write(RunState(supervisor=2 ** 22 + 1, status=READY, processes=(other,)))
    assert control.down(run_dir, io.StringIO()) == 0
    assert pid_alive(proc.pid) and proc.poll() is None


def test_detached_up_reports_a_taken_gateway_port(tmp_path: Path) -> None:
    """`up --detach` with the gateway port busy names the port and process, starts nothing."""
    # the instances' block from the test allocator too: a fixed one (41000, in the ephemeral
    # range) was taken by some client's port in a CI run, and the message named it first
    ports = Ports(base=free_block(BLOCK), gateway=free_port(), api=free_port(),
                  grpc=free_port())
    opts = DemoOptions(workdir=tmp_path, certs=tmp_path / "certs", ports=ports, traffic=False,
                       timing=Timing(ready_timeout=10))
    forwarded = ["--gateway-port", str(ports.gateway), "--base-port", str(ports.base),
                 "--api-port", str(ports.api), "--grpc-port", str(ports.grpc),
                 "--certs-dir", str(opts.certs), "--no-traffic"]
    out = io.StringIO()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports.gateway))
        busy.listen()
        assert control.up_detached(opts, forwarded, out, timeout=60) == 1
    said = out.getvalue()
    # the port, who needs it and who holds it (this test's process)
    assert (f"ports: port {ports.gateway} needed by gateway (listen) is already in use on "
            f"127.0.0.1, held by pid {os.getpid()} (") in said, said
    # and what to do: the options that move the demo's ports
    assert "--gateway-port, --base-port" in said and "--api-port and --grpc-port" in said, said
    assert said.endswith("nothing was started or created.\n"), said
    # found before anything was made: no supervisor, no run dir, no CA
    assert sorted(tmp_path.iterdir()) == [], sorted(tmp_path.iterdir())


@pytest.mark.parametrize("detach", [False, True])
def test_up_from_another_directory_creates_nothing_when_it_cannot_start(
        tmp_path: Path, detach: bool) -> None:
    """`meshctl demo up` run in a fresh directory with a taken API port and a --routes that
    is no directory: every reason, at once, and no `certs/` or `.ami/` left behind."""
    ports = Ports(base=free_block(BLOCK), gateway=free_port(), api=free_port(),
                  grpc=free_port())
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports.api))
        busy.listen()
        out = subprocess.run(
            [sys.executable, "-m", "meshctl", "demo", "up", "--no-traffic",
             *(["--detach"] if detach else []),
             "--gateway-port", str(ports.gateway), "--base-port", str(ports.base),
             "--api-port", str(ports.api), "--grpc-port", str(ports.grpc),
             "--routes", "no-such-routes"],
            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out
    lines = out.stdout.splitlines()
    assert lines[0] == f"meshctl demo up: --routes: {tmp_path / 'no-such-routes'} is not a " \
                       "directory", lines
    assert lines[1].startswith(f"ports: port {ports.api} needed by controlplane (api) is "
                               f"already in use on 127.0.0.1, held by pid {os.getpid()} ("), lines
    assert lines[-1] == "nothing was started or created.", lines
    assert sorted(tmp_path.iterdir()) == [], sorted(tmp_path.iterdir())


def test_up_while_a_demo_runs_says_how_to_stop_it(tmp_path: Path) -> None:
    """`up` and `up --detach` in a directory whose demo runs start nothing, and say so with
    the command that stops it."""
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "meshctl"],
                            start_new_session=True)
    try:
        opts = DemoOptions(workdir=tmp_path, certs=tmp_path / "certs")
        opts.run_dir.path.mkdir(parents=True)
        opts.run_dir.write(RunState(supervisor=fake.pid, status=READY))
        out = io.StringIO()
        assert control.up_detached(opts, [], out) == 1
        assert out.getvalue() == (f"the demo is already running (supervisor pid {fake.pid}); "
                                  "`meshctl demo down` stops it\n")
    finally:
        fake.kill()
        fake.wait()

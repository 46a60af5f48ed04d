"""The demo supervisor with tiny fake processes: start order, failure reports, clean stops."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshctl.demo.procs import listening, log_tail, pid_alive
from meshctl.demo.state import RunDir, RunState
from meshctl.demo.supervisor import StartError, Supervisor, Timing
from meshctl.demo.topology import ProcessSpec
from tests.fakes import FakeClock
from tests.ports import free_port
from tests.proxyharness import eventually

FAST = Timing(ready_timeout=10.0, probe_interval=0.05, stop_timeout=5.0)


def server(name: str, port: int, after: tuple[str, ...] = ()) -> ProcessSpec:
    """A process that is ready once its HTTP server answers 200 on /."""
    return ProcessSpec(name=name, role="app",
                       argv=("python", "-m", "http.server", str(port), "--bind", "127.0.0.1"),
                       ports=(("http", "127.0.0.1", port),),
                       ready_url=f"http://127.0.0.1:{port}/", after=after)


def crasher(name: str, after: tuple[str, ...] = ()) -> ProcessSpec:
    code = "import sys; print('boom: cannot read /etc/ami/missing.yaml'); sys.exit(3)"
    return ProcessSpec(name=name, role="app", argv=("python", "-c", code),
                       ready_url="http://127.0.0.1:9/never", after=after)


def supervisor(tmp_path: Path, *specs: ProcessSpec, timing: Timing = FAST,
               clock: Callable[[], float] = time.monotonic) -> Supervisor:
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    return Supervisor(specs, run_dir, RunState(supervisor=0), cwd=tmp_path, timing=timing,
                      clock=clock)


@pytest.fixture
def ports() -> Iterator[tuple[int, int]]:
    yield free_port(), free_port()


async def test_starts_in_dependency_order_and_stops_everything(
        tmp_path: Path, ports: tuple[int, int]) -> None:
    """A process starts only once the one it waits for is ready; stop leaves no pid or port."""
    first, second = ports
    sup = supervisor(tmp_path, server("b", second, after=("a",)), server("a", first))
    await sup.start()
    pids = sup.pids
    assert list(pids) == ["a", "b"]  # b was listed first but waited for a
    assert [p.name for p in sup.state.processes] == ["a", "b"]
    assert sup.run_dir.read() == sup.state
    assert listening(first) and listening(second)
    await sup.stop()
    assert not any(pid_alive(pid) for pid in pids.values())
    assert not listening(first) and not listening(second)


async def test_early_exit_names_the_process_shows_its_log_and_stops_the_rest(
        tmp_path: Path, ports: tuple[int, int]) -> None:
    """A process that dies before ready fails the start with its name, status and log tail."""
    sup = supervisor(tmp_path, server("a", ports[0]), crasher("b", after=("a",)))
    with pytest.raises(StartError) as info:
        await sup.start()
    err = info.value
    assert err.name == "b"
    assert "exited with status 3 before it was ready" in str(err)
    assert "boom: cannot read /etc/ami/missing.yaml" in str(err)
    assert str(tmp_path / "run" / "b.log") in str(err)
    a_pid = next(p.pid for p in sup.state.processes if p.name == "a")
    assert not pid_alive(a_pid)
    assert not listening(ports[0])
    assert sup.pids == {}


async def test_port_taken_is_reported_before_anything_starts(
        tmp_path: Path, ports: tuple[int, int]) -> None:
    """A port in use names the port and the process needing it; no process is started."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", ports[1]))
        busy.listen()
        sup = supervisor(tmp_path, server("a", ports[0]), server("gateway", ports[1]))
        with pytest.raises(StartError) as info:
            await sup.start()
    assert f"port {ports[1]} needed by gateway (http) is already in use" in str(info.value)
    assert sup.state.processes == ()


async def test_a_port_planned_twice_is_reported(tmp_path: Path, ports: tuple[int, int]) -> None:
    """Two processes given the same port (e.g. --gateway-port inside the block) is an error."""
    sup = supervisor(tmp_path, server("a", ports[0]), server("b", ports[0]))
    with pytest.raises(StartError, match=f"port {ports[0]} is planned for both a"):
        await sup.start()


async def test_not_ready_in_time_is_a_failure(tmp_path: Path, ports: tuple[int, int]) -> None:
    """A process that runs but never answers its ready URL fails at the deadline and is stopped,
    the end of its log in the error. The deadline is on the injected clock, moved past it once
    the process has logged: on a loaded machine an interpreter can take longer than a real
    0.5 s to start, and its log was still empty when the deadline came."""
    silent = ProcessSpec(name="stuck", role="app",
                         argv=("python", "-c", "import time; print('waiting'); time.sleep(60)"),
                         ready_url=f"http://127.0.0.1:{ports[0]}/ready")
    clock = FakeClock()
    sup = supervisor(tmp_path, silent, clock=clock,
                     timing=Timing(ready_timeout=0.5, probe_interval=0.05, stop_timeout=5))
    start = asyncio.create_task(sup.start())
    log = sup.run_dir.log("stuck")
    await eventually(lambda: "waiting" in log_tail(log), 30, what="the process's first line")
    assert not start.done()  # not ready, before its deadline: still waited for
    clock.advance(0.5)
    with pytest.raises(StartError, match=r"stuck: not ready after 0.5 s") as info:
        await asyncio.wait_for(start, 30)
    assert "waiting" in info.value.tail
    assert not pid_alive(sup.state.processes[0].pid)


async def test_wait_exit_reports_a_process_that_dies_later(
        tmp_path: Path, ports: tuple[int, int]) -> None:
    """After start, the first process to exit is named with its status and log."""
    dies = ProcessSpec(name="flaky", role="app",
                       argv=("python", "-c", "import sys; sys.stdin.read(); sys.exit(7)"))
    sup = supervisor(tmp_path, server("a", ports[0]), dies)
    await sup.start()
    err = await sup.wait_exit()  # stdin is /dev/null: it exits right away
    assert err.name == "flaky" and "status 7" in str(err)
    await sup.stop()
    assert not listening(ports[0])


async def test_children_do_not_inherit_proxy_settings(tmp_path: Path) -> None:
    """HTTP_PROXY from the user's shell never reaches a demo process (apps use their sidecar)."""
    out = tmp_path / "env.txt"
    spec = ProcessSpec(name="env", role="app", env=(("APP_SETTING", "1"),), argv=(
        "python", "-c", f"import os; open({str(out)!r}, 'w').write(repr(sorted(os.environ)))"))
    run_dir = RunDir(tmp_path / "run")
    run_dir.path.mkdir()
    sup = Supervisor((spec,), run_dir, RunState(supervisor=0), cwd=tmp_path, timing=FAST,
                     environ={"HTTP_PROXY": "http://corp:3128", "no_proxy": "x", "HOME": "/h"})
    await sup.start()
    await sup.wait_exit()
    await sup.stop()
    names = out.read_text()
    assert "HTTP_PROXY" not in names and "no_proxy" not in names
    assert "APP_SETTING" in names and "HOME" in names

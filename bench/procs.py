"""Starting, pinning, probing and stopping the servers of a bench path."""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.h2probe import h2_status

Clock = Callable[[], float]
REPO_ROOT = Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """Our environment with the repo root importable (children run with cwd = the run dir)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One process of a path; `cost` marks the proxies whose CPU/RSS the bench reports."""

    name: str
    argv: tuple[str, ...]
    cost: bool = True
    ready_port: int | None = None  # an HTTP port that answers 200 on `ready_path` once up
    ready_path: str = "/"
    ready_h2: bool = False  # probe `ready_port` with HTTP/2 (h2c prior knowledge)


@dataclass(frozen=True, slots=True)
class CpuPlan:
    """taskset CPU lists: servers on some cores, the load generator on the others."""

    servers: str | None
    loadgen: str | None

    def wrap(self, argv: tuple[str, ...], cpus: str | None) -> tuple[str, ...]:
        """Prefix `argv` with taskset when pinning is on."""
        return ("taskset", "-c", cpus, *argv) if cpus is not None else argv


def cpu_plan(enabled: bool = True) -> CpuPlan:
    """Load generator on the last CPU, everything else on the rest (no pinning on 1 CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled or len(cpus) < 2 or shutil.which("taskset") is None:
        return CpuPlan(None, None)
    return CpuPlan(",".join(map(str, cpus[:-1])), str(cpus[-1]))


def http_status(port: int, path: str = "/", host: str = "backend", timeout: float = 1.0) -> int:
    """Status of one GET to 127.0.0.1:port, or 0 when the connection fails."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except OSError:
        return 0
    finally:
        conn.close()


def wait_http_ok(
    port: int,
    path: str = "/",
    *,
    deadline_s: float = 15.0,
    alive: Callable[[], bool] = lambda: True,
    clock: Clock = time.monotonic,
    pause: Callable[[float], None] = time.sleep,
    h2: bool = False,
    host: str = "backend",
) -> None:
    """Poll GET path until 200; raise RuntimeError at the deadline or if `alive()` turns False.

    `h2`: send the GET as HTTP/2 over cleartext (prior knowledge) instead of HTTP/1.1.
    `host`: its Host header (a control plane answers only names it is known by).
    """
    end = clock() + deadline_s
    while True:
        status = h2_status(port, path) if h2 else http_status(port, path, host)
        if status == 200:
            return
        if not alive():
            raise RuntimeError(f"process exited before 127.0.0.1:{port}{path} was ready")
        if clock() >= end:
            raise RuntimeError(f"127.0.0.1:{port}{path} not ready after {deadline_s}s ({status})")
        pause(0.05)


class Running:
    """A started server process with its log file."""

    def __init__(self, spec: ServerSpec, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.spec = spec
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        """The process id."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        """The end of the process's output, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (nginx: fast shutdown), then SIGKILL after `timeout`."""
        if not self.alive():
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout)


def start(spec: ServerSpec, run_dir: Path, plan: CpuPlan) -> Running:
    """Start `spec` pinned to the server CPUs; output goes to RUN_DIR/NAME.log."""
    log = run_dir / f"{spec.name}.log"
    with log.open("wb") as out:
        popen = subprocess.Popen(
            plan.wrap(spec.argv, plan.servers),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=run_dir,
            env=child_env(),
        )
    return Running(spec, popen, log)


def start_all(specs: tuple[ServerSpec, ...], run_dir: Path, plan: CpuPlan) -> list[Running]:
    """Start specs in order (upstream first), waiting for each one's readiness probe."""
    running: list[Running] = []
    try:
        for spec in specs:
            proc = start(spec, run_dir, plan)
            running.append(proc)
            if spec.ready_port is not None:
                try:
                    wait_http_ok(
                        spec.ready_port, spec.ready_path, alive=proc.alive, h2=spec.ready_h2
                    )
                except RuntimeError as exc:
                    raise RuntimeError(f"{spec.name}: {exc}\n{proc.log_tail()}") from exc
    except BaseException:
        stop_all(running)
        raise
    return running


def stop_all(running: list[Running]) -> None:
    """Stop in reverse start order."""
    for proc in reversed(running):
        proc.stop()

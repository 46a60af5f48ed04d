"""Starts the demo's processes in dependency order, each once its dependencies are ready.

A process starts when every name in its `after` is ready (sidecar before app); it is ready when
its `ready_url` answers 200. A port already taken, a process that exits early or one not ready
in time raises `StartError` (process name, reason, its log tail) after everything started so
far has been stopped, in reverse order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from meshctl.demo.procs import command_line, http_ok, log_tail, signal_group, taken_ports
from meshctl.demo.state import ProcessRecord, RunDir, RunState
from meshctl.demo.topology import ProcessSpec

# Never inherited: the apps must reach other services only through their sidecar.
_STRIPPED_ENV = ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY",
                 "all_proxy", "NO_PROXY", "no_proxy")


class StartError(Exception):
    """The demo could not start: which process, why, and the end of its log."""

    def __init__(self, name: str, reason: str, log: Path | None = None) -> None:
        self.name, self.reason, self.log = name, reason, log
        self.tail = log_tail(log) if log else ""
        text = f"{name}: {reason}"
        if log is not None:
            text += f"\n--- last lines of {log} ---\n{self.tail or '(empty)'}"
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class Timing:
    """Deadlines: readiness of each process, the poll interval, and the stop grace period."""

    ready_timeout: float = 30.0
    probe_interval: float = 0.1
    stop_timeout: float = 10.0


@dataclass(slots=True)
class _Running:
    spec: ProcessSpec
    proc: asyncio.subprocess.Process
    exited: asyncio.Task[int]
    log: Path


class Supervisor:
    """Owns the demo's child processes: start in order, watch, stop in reverse."""

    def __init__(self, specs: Sequence[ProcessSpec], run_dir: RunDir, state: RunState, *,
                 cwd: Path, environ: Mapping[str, str] | None = None, timing: Timing = Timing(),
                 probe: Callable[[str], bool] = http_ok,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.specs = tuple(specs)
        self.run_dir = run_dir
        self.state = state
        self._cwd = cwd
        base = dict(os.environ if environ is None else environ)
        self._env = {k: v for k, v in base.items() if k not in _STRIPPED_ENV}
        self._timing = timing
        self._probe = probe
        self._clock = clock
        self._running: list[_Running] = []

    async def start(self) -> None:
        """Start every process; on any failure stop what started and raise `StartError`."""
        problems = await asyncio.to_thread(taken_ports, self.specs)
        if problems:  # one line each: with another demo running, that is every port
            raise StartError("ports", problems[0] if len(problems) == 1 else
                             f"{len(problems)} ports unavailable:\n  " + "\n  ".join(problems))
        ready = {s.name: asyncio.Event() for s in self.specs}
        try:
            async with asyncio.TaskGroup() as group:
                for spec in self.specs:
                    group.create_task(self._start_one(spec, ready))
        except BaseExceptionGroup as eg:
            await self.stop()
            errors = [e for e in eg.exceptions if isinstance(e, StartError)]
            if errors:
                raise errors[0] from None
            raise
        except asyncio.CancelledError:
            await self.stop()
            raise

    async def _start_one(self, spec: ProcessSpec, ready: Mapping[str, asyncio.Event]) -> None:
        for dep in spec.after:
            await ready[dep].wait()
        log = self.run_dir.log(spec.name)
        argv = command_line(spec)
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=self._cwd, env={**self._env, "PYTHONUNBUFFERED": "1", **spec.environ},
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True)  # own group: Ctrl-C reaches the supervisor only
        running = _Running(spec, proc, asyncio.create_task(proc.wait()), log)
        self._running.append(running)
        self.state = self.state.with_process(
            ProcessRecord(spec.name, proc.pid, tuple(argv), spec.ports, str(log)))
        self.run_dir.write(self.state)
        await self._wait_ready(running)
        ready[spec.name].set()

    async def _wait_ready(self, r: _Running) -> None:
        url = r.spec.ready_url
        deadline = self._clock() + self._timing.ready_timeout
        while True:
            if r.exited.done():
                raise StartError(r.spec.name, f"exited with status {r.exited.result()} "
                                 "before it was ready", r.log)
            if url is None or await asyncio.to_thread(self._probe, url):
                return
            if self._clock() >= deadline:
                raise StartError(r.spec.name, f"not ready after {self._timing.ready_timeout:g} s "
                                 f"({url} does not answer 200)", r.log)
            await asyncio.wait({r.exited}, timeout=self._timing.probe_interval)

    async def wait_exit(self) -> StartError:
        """Wait until any process exits; describe it the way a start failure is described."""
        if not self._running:
            await asyncio.Event().wait()
        done, _ = await asyncio.wait({r.exited for r in self._running},
                                     return_when=asyncio.FIRST_COMPLETED)
        r = next(r for r in self._running if r.exited in done)
        return StartError(r.spec.name, f"exited unexpectedly with status {r.exited.result()}",
                          r.log)

    async def stop(self) -> None:
        """Stop every started process, last started first: SIGTERM, then SIGKILL at the deadline."""
        while self._running:
            r = self._running.pop()
            await self._stop_one(r)

    async def _stop_one(self, r: _Running) -> None:
        if not r.exited.done():
            signal_group(r.proc.pid, signal.SIGTERM)
            await asyncio.wait({r.exited}, timeout=self._timing.stop_timeout)
        # Whatever is left in its group (the process itself or anything it forked) is killed.
        signal_group(r.proc.pid, signal.SIGKILL)
        with contextlib.suppress(asyncio.CancelledError):
            await r.exited

    @property
    def pids(self) -> dict[str, int]:
        return {r.spec.name: r.proc.pid for r in self._running}

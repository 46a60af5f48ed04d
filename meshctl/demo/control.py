"""`meshctl demo up --detach`, `status` and `down`: work on a demo through its run directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import TextIO

from meshctl.demo.procs import listening, log_tail, pid_alive, signal_group
from meshctl.demo.runner import (
    SUPERVISOR_HINT,
    DemoOptions,
    already_running,
    banner,
    cannot_start,
)
from meshctl.demo.state import FAILED, READY, STOPPED, SUPERVISOR_LOG, RunDir
from meshctl.output import render_table


def up_detached(opts: DemoOptions, up_args: Sequence[str], out: TextIO,
                timeout: float = 60.0) -> int:
    """Start `meshctl demo up <up_args>` in the background; return once it is ready or failed."""
    run_dir = opts.run_dir
    running = already_running(run_dir)
    if running:
        print(f"the demo is already running (supervisor pid {running.supervisor}); "
              "`meshctl demo down` stops it", file=out)
        return 1
    refused = cannot_start(opts)  # (before the run dir: a refused demo leaves no file)
    if refused:
        print(refused, file=out)
        return 1
    run_dir.path.mkdir(parents=True, exist_ok=True)
    run_dir.clear()
    log = run_dir.path / SUPERVISOR_LOG
    started = time.monotonic()
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "meshctl", "demo", "up", *up_args], cwd=opts.workdir,
            stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True)
    deadline = started + timeout
    while True:
        state = run_dir.read()
        if state is not None and state.supervisor == proc.pid:
            if state.status == READY:
                print(banner(opts, time.monotonic() - started).replace(
                    "Ctrl-C stops everything.", "`meshctl demo down` stops everything."),
                    file=out)
                return 0
            if state.status == FAILED:
                print(f"meshctl demo up: {state.error}", file=out)
                proc.wait(timeout=opts.timing.stop_timeout * 2)
                return 1
        code = proc.poll()
        if code is not None:
            print(f"meshctl demo up: the supervisor exited with status {code}\n"
                  f"--- last lines of {log} ---\n{log_tail(log)}", file=out)
            return 1
        if time.monotonic() >= deadline:
            print(f"meshctl demo up: not ready after {timeout:g} s; stopping it "
                  f"(see {log})", file=out)
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=opts.timing.stop_timeout * 2)
            return 1
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            pass


def status(run_dir: RunDir, out: TextIO) -> int:
    """One line per process (name, pid, alive, ports, log); 0 if every process is alive."""
    state = run_dir.read()
    if state is None:
        print(f"the demo is not running (no state in {run_dir.path})", file=out)
        return 1
    sup_alive = pid_alive(state.supervisor, SUPERVISOR_HINT)
    print(f"supervisor pid {state.supervisor} {'alive' if sup_alive else 'gone'}, "
          f"status {state.status}", file=out)
    for name, url in state.urls.items():
        print(f"  {name:<13} {url}", file=out)
    rows = [("NAME", "PID", "ALIVE", "PORTS", "LOG")]
    alive_all = sup_alive
    for p in state.processes:
        alive = pid_alive(p.pid, p.hint)
        alive_all = alive_all and alive
        ports = ",".join(f"{what}={port}" for what, _, port in p.ports) or "-"
        rows.append((p.name, str(p.pid), "yes" if alive else "no", ports, p.log))
    # laid out as meshctl's other tables: columns as wide as their cells, three spaces apart
    print(render_table(rows[0], rows[1:]), end="", file=out)
    return 0 if alive_all and state.processes else 1


def down(run_dir: RunDir, out: TextIO, timeout: float = 30.0) -> int:
    """Stop the supervisor (it stops its processes), then anything left; check no port listens."""
    state = run_dir.read()
    if state is None:
        print("the demo is not running; nothing to stop", file=out)
        return 0
    running = sum(1 for p in state.processes if pid_alive(p.pid, p.hint))
    if pid_alive(state.supervisor, SUPERVISOR_HINT):
        with contextlib.suppress(ProcessLookupError):
            os.kill(state.supervisor, signal.SIGTERM)  # not its group: that may be a shell job
        _wait_gone(state.supervisor, SUPERVISOR_HINT, time.monotonic() + timeout)
    leftovers = [p for p in state.processes if pid_alive(p.pid, p.hint)]
    for p in reversed(leftovers):  # the supervisor died before stopping them
        signal_group(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in reversed(leftovers):
        if not _wait_gone(p.pid, p.hint, deadline):
            signal_group(p.pid, signal.SIGKILL)
    still = [p.name for p in state.processes if pid_alive(p.pid, p.hint)]
    open_ports = [f"{port} ({p.name} {what})" for p in state.processes
                  for what, host, port in p.ports if listening(port, _reach(host))]
    run_dir.write(replace(state, status=STOPPED))
    if still or open_ports:
        print("meshctl demo down: left behind: "
              + "; ".join([*(f"process {n}" for n in still),
                           *(f"port {p}" for p in open_ports)]), file=out)
        return 1
    done = (f"stopped {running} process{'es' if running != 1 else ''}" if running
            else "the demo was not running")
    print(f"{done}; no process and no port left", file=out)
    return 0


def _wait_gone(pid: int, hint: str | None, deadline: float) -> bool:
    """Wait until `pid` is gone (a process we did not start cannot be waited on: poll)."""
    pause = 0.02
    while pid_alive(pid, hint):
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.25)
    return True


def _reach(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else host


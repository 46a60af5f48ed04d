"""Process and port helpers for the demo: free-port checks, readiness probes, pid liveness, logs."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

from meshctl.demo.portholder import port_holder
from meshctl.demo.topology import ProcessSpec

LOG_TAIL_LINES = 20
# Probes go straight to 127.0.0.1, whatever HTTP_PROXY the user's shell has.
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def command_line(spec: ProcessSpec) -> list[str]:
    """The argv to exec locally: `meshctl`/`python` run with the current interpreter."""
    head, *rest = spec.argv
    if head == "meshctl":
        return [sys.executable, "-m", "meshctl", *rest]
    if head == "python":
        return [sys.executable, *rest]
    return [head, *rest]


def port_in_use(host: str, port: int) -> bool:
    """Whether binding host:port fails with EADDRINUSE (as the process's own bind would)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def taken_ports(specs: Iterable[ProcessSpec]) -> list[str]:
    """One line per port that is already in use or planned twice, naming who needs it."""
    problems: list[str] = []
    seen: dict[int, str] = {}
    for spec in specs:
        for what, host, port in spec.ports:
            owner = f"{spec.name} ({what})"
            if port in seen:
                problems.append(f"port {port} is planned for both {seen[port]} and {owner}")
                continue
            seen[port] = owner
            if not 0 < port < 65536:
                problems.append(f"port {port} needed by {owner} is out of range (1-65535)")
            elif port_in_use(host, port):
                holder = port_holder(port)
                problems.append(f"port {port} needed by {owner} is already in use on {host}"
                                + (f", held by {holder}" if holder else ""))
    return problems


def listening(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether GET url answers 200 (any error or other status: not ready yet)."""
    try:
        with DIRECT.open(url, timeout=timeout) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def pid_alive(pid: int, argv_hint: str | None = None) -> bool:
    """Whether `pid` runs (and, given a hint, its command line contains it: pids get reused).

    A zombie is dead; a process whose command line already reads empty is exiting, its
    memory freed but maybe not yet its sockets, so it still counts as alive.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return argv_hint is None
    if _is_zombie(pid):
        return False
    if argv_hint is None:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return True
    return not cmdline or argv_hint in cmdline


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] == "Z"


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process group the demo started `pid` in (it and anything it forked)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file ('' if there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])

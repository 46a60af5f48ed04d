"""Loopback ports for the processes tests start: below the ephemeral range, each handed out once."""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

# A port the OS picks with bind(0) comes from the ephemeral range, which outgoing connections
# draw their local ports from too: one of them (any test's client, any lingering process) can
# take it before the child process binds it ("Address already in use"). Ports below that range
# are only ever taken by listeners, and this allocator hands each out once per run.
_FLOOR = 20000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_CEILING = max(_ephemeral_low(), _FLOOR + 2000)
_lock = threading.Lock()
# A random start, so that two runs side by side on one machine rarely walk the same ports.
_next = random.randrange(_FLOOR, _CEILING)


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_block(size: int) -> int:
    """The first of ``size`` consecutive loopback ports nobody listens on, not handed out before."""
    global _next
    with _lock:
        for _ in range(_CEILING - _FLOOR):
            if _next + size > _CEILING:
                _next = _FLOOR
            base, _next = _next, _next + size
            if all(_bindable(p) for p in range(base, base + size)):
                return base
    raise RuntimeError(f"no {size} free loopback ports in {_FLOOR}-{_CEILING}")


def free_port() -> int:
    """A loopback port nobody listens on, outside the ephemeral range, not handed out before."""
    return free_block(1)

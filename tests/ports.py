"""Loopback ports for the processes tests start: below the ephemeral range, each handed out once."""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
import threading
from pathlib import Path

# A port the OS picks with bind(0) comes from the ephemeral range, which outgoing connections
# draw their local ports from too: one of them (any test's client, any lingering process) can
# take it before the child process binds it ("Address already in use"). Ports below that range
# are only ever taken by listeners, and this allocator hands each out once per run.
_FLOOR = 20000
# Runs side by side on one machine (a shared box, or two checkouts): a port free when one run
# checked it could be taken by the other's process before ours bound it. So a run hands out
# ports from leases of LEASE ports, each held with a lock file (flock, released when the
# process ends, however it ends) that other runs skip.
LEASE = 128
LEASE_DIR = Path(tempfile.gettempdir()) / "ami-test-ports"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_CEILING = max(_ephemeral_low(), _FLOOR + 2000)
LEASES = (_CEILING - _FLOOR) // LEASE
_lock = threading.Lock()
_held: dict[int, int] = {}  # lease index -> the open file holding its lock
# A random first lease, so that two runs rarely try the same ones.
_lease = random.randrange(LEASES)
_next = _end = 0  # the ports left in the current lease: _next up to _end


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _hold(lease: int) -> bool:
    """Lock the lease's file unless another process holds it (this one may reuse its own)."""
    if lease in _held:
        return True
    LEASE_DIR.mkdir(mode=0o777, exist_ok=True)
    fd = os.open(LEASE_DIR / f"{_FLOOR + lease * LEASE}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False
    _held[lease] = fd
    return True


def _next_lease() -> None:
    global _lease, _next, _end
    for _ in range(LEASES):
        _lease = (_lease + 1) % LEASES
        if _hold(_lease):
            _next = _FLOOR + _lease * LEASE
            _end = _next + LEASE
            return
    raise RuntimeError(f"every lease of loopback ports in {_FLOOR}-{_CEILING} is held")


def free_block(size: int) -> int:
    """The first of ``size`` consecutive loopback ports nobody listens on, not handed out before."""
    global _next
    assert size <= LEASE, f"a block of {size} ports does not fit in a lease of {LEASE}"
    with _lock:
        for _ in range(_CEILING - _FLOOR):
            if _next + size > _end:
                _next_lease()
            base, _next = _next, _next + size
            if all(_bindable(p) for p in range(base, base + size)):
                return base
    raise RuntimeError(f"no {size} free loopback ports in {_FLOOR}-{_CEILING}")


def free_port() -> int:
    """A loopback port nobody listens on, outside the ephemeral range, not handed out before."""
    return free_block(1)

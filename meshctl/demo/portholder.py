"""Which process listens on a TCP port (Linux /proc; None where it cannot be known)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

LISTEN = "0A"  # /proc/net/tcp's state of a listening socket
SHOWN = 80  # characters of the holder's command line a message shows


def _listening_inodes(port: int, proc: Path) -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            for line in (proc / "net" / table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == LISTEN \
                        and int(fields[1].rpartition(":")[2], 16) == port:
                    inodes.add(fields[9])
    return inodes


def port_holder(port: int, proc: Path = Path("/proc")) -> str | None:
    """``pid N (command line)`` of a process listening on ``port``; None when none is found
    (no /proc, or the socket's owner is a process this user cannot look into)."""
    inodes = {f"socket:[{inode}]" for inode in _listening_inodes(port, proc)}
    if not inodes:
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        return f"pid {entry.name} ({_command(entry)})"
    return None


def _command(entry: Path) -> str:
    try:
        argv = (entry / "cmdline").read_bytes().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    line = " ".join(" ".join(a.decode(errors="replace").split()) for a in argv)
    return line if len(line) <= SHOWN else line[:SHOWN - 3] + "..."

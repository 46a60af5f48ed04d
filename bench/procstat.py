"""CPU seconds and peak RSS of a process tree, read from /proc."""

from __future__ import annotations

import os
from pathlib import Path

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # comm (field 2) may hold spaces and parentheses: split after the last ')'.
    text = (_PROC / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> list[int]:
    """Direct children of pid (scans /proc; the tree here is tiny)."""
    kids = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry.name))[1]) == pid:
                kids.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return kids


def serving_pids(pid: int) -> list[int]:
    """The processes doing the work: an nginx master's workers, else pid itself.

    A `taskset` wrapper exec()s its command, so the pid is the server's own.
    """
    kids = children(pid)
    return kids or [pid]


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime summed over pids (exited pids count as 0)."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def peak_rss_mb(pids: list[int]) -> float:
    """VmHWM (peak resident set) summed over pids, in MiB."""
    total_kib = 0
    for pid in pids:
        try:
            lines = (_PROC / str(pid) / "status").read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("VmHWM:"):
                total_kib += int(line.split()[1])
    return total_kib / 1024.0


def rss_mb(pid: int) -> float | None:
    """Current resident set (VmRSS) of pid in MiB, or None once it has exited."""
    try:
        lines = (_PROC / str(pid) / "status").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return None

"""CPU time other processes took on the bench's CPUs during a measurement (the neighbours')."""

from __future__ import annotations

import os
import resource
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.procstat import children, cpu_seconds

_PROC = Path("/proc")
_TICKS = os.sysconf("SC_CLK_TCK")
# /proc/stat columns counted as busy: user, nice, system, irq, softirq. With tick-based
# accounting (no CONFIG_IRQ_TIME_ACCOUNTING) a process's stime includes the irq and softirq
# ticks it was interrupted by, so these are the columns that add up to the processes' times.
_BUSY_COLUMNS = (0, 1, 2, 5, 6)


def busy_seconds(cpus: Iterable[int] | None = None, stat: Path = _PROC / "stat") -> float:
    """Busy time (user + nice + system + irq + softirq) of `cpus` (default: all) since boot."""
    wanted = None if cpus is None else {f"cpu{c}" for c in cpus}
    total = 0
    for line in stat.read_text().splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or (wanted and name not in wanted):
            continue
        fields = rest.split()
        total += sum(int(fields[i]) for i in _BUSY_COLUMNS)
    return total / _TICKS


def descendants(pid: int) -> list[int]:
    """Every live process below pid."""
    out: list[int] = []
    todo = [pid]
    while todo:
        kids = children(todo.pop())
        out.extend(kids)
        todo.extend(kids)
    return out


def own_seconds() -> float:
    """CPU time of this process and all it started: live descendants from /proc, the reaped
    ones (the load generator, once it exits) from RUSAGE_CHILDREN."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime
            + cpu_seconds(descendants(os.getpid())))


@dataclass(slots=True)
class NeighbourMeter:
    """Busy time on `cpus` minus the bench's own processes' time, between start and stop.

    A run whose measurement window held a neighbour's CPU measures the neighbour as much as
    the path: its fixed-rate p99 especially (one preempted millisecond in 100 requests).
    """

    cpus: tuple[int, ...] | None = None
    _busy: float = 0.0
    _own: float = 0.0

    def start(self) -> None:
        self._busy, self._own = busy_seconds(self.cpus), own_seconds()

    def stop(self) -> float:
        """Neighbours' CPU seconds since start (0 when the counts' rounding makes it negative)."""
        busy = busy_seconds(self.cpus) - self._busy
        own = own_seconds() - self._own
        return max(0.0, busy - own)


def plan_cpus(*cpu_lists: str | None) -> tuple[int, ...] | None:
    """The CPUs of taskset lists like "0" or "0,1"; None (all CPUs) when not pinned."""
    if any(c is None for c in cpu_lists):
        return None
    return tuple(sorted({int(c) for cl in cpu_lists if cl for c in cl.split(",")}))

"""When each phase of a store write's propagation happened: pass, pushes queued, written, ACKed.

For each store revision the reconciler saw written (the last ``kept``): when, and the times of
the first reconcile pass that read it: its start, when it had built and queued every message
(snapshots built, deltas worked out, protobuf made), then, of the messages that pass sent,
when the last was written to its stream and when the last was ACKed. ``GET /api/v1/sync``
answers them as ``phases_ms`` (ms from the write): where the time to ``converged_ms`` went.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False, slots=True)
class PassTimes:
    """One pass's phase times (monotonic seconds; None: not reached yet)."""

    started: float
    queued: float | None = None  # every reached proxy's message built and handed to its stream
    pushes: int = 0  # messages the pass sent
    last_written: float | None = None  # ... the last written to its stream (gRPC took it)
    last_acked: float | None = None  # ... the last ACKed


class Timeline:
    """Write times by revision, and the pass that first read each."""

    def __init__(self, kept: int) -> None:
        self._kept = kept
        self._written: dict[int, float] = {}  # revision -> when the watch saw it
        self._passes: dict[int, PassTimes] = {}  # revision -> the first pass reading it
        self._unread: list[int] = []  # revisions written that no pass has read yet
        self._reached: dict[int, float] = {}  # revision -> when its last proxy first ran it

    def wrote(self, revision: int, at: float) -> None:
        if revision in self._written:
            return
        if len(self._written) >= self._kept:
            oldest = next(iter(self._written))
            del self._written[oldest]
            self._passes.pop(oldest, None)
            self._reached.pop(oldest, None)
        self._written[revision] = at
        self._unread.append(revision)

    def written_at(self, revision: int) -> float | None:
        return self._written.get(revision)

    def reached(self, low: int, high: int, at: float, since: float | None = None) -> None:
        """A proxy's config moved from revision ``low`` to ``high`` at ``at``: the writes in
        (low, high] reached it then (with ``since``: only those written at or after it)."""
        if high - low <= len(self._written):
            revisions = [r for r in range(low + 1, high + 1) if r in self._written]
        else:  # (a first advance from 0: look at the writes kept, not the whole range)
            revisions = [r for r in self._written if low < r <= high]
        for r in revisions:
            if (since is None or self._written[r] >= since) and at > self._reached.get(r, at - 1):
                self._reached[r] = at

    def converged(self, revision: int) -> float | None:
        """Seconds from the write of ``revision`` to the last proxy it reached first running
        it (None: the write, or its reaching any proxy, is not remembered)."""
        written, reached = self._written.get(revision), self._reached.get(revision)
        if written is None or reached is None:
            return None
        return max(reached - written, 0.0)

    def pass_started(self, revision: int, at: float) -> PassTimes | None:
        """A pass reading the store at ``revision`` started at ``at``: its times, if it is the
        first to read some write (else None: nothing to time)."""
        reads = [r for r in self._unread if r <= revision]
        if not reads:
            return None
        self._unread = [r for r in self._unread if r > revision]
        times = PassTimes(at)
        for r in reads:
            if r in self._written:
                self._passes[r] = times
        return times

    def phases_ms(self, revision: int) -> dict[str, float | int] | None:
        """The phases ``revision`` reached, in ms from its write (``pushes``: a count)."""
        written, times = self._written.get(revision), self._passes.get(revision)
        if written is None or times is None:
            return None
        out: dict[str, float | int] = {"pushes": times.pushes}
        for key, at in (("pass_started", times.started), ("queued", times.queued),
                        ("last_written", times.last_written),
                        ("last_acked", times.last_acked)):
            if at is not None:
                out[key] = round((at - written) * 1000, 1)
        return out

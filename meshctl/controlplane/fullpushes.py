"""Bounds the full snapshots in flight at once; the proxies over the bound wait in line.

When hundreds of sidecars connect together, each is owed its first snapshot in full (~60 KB
at 1000 endpoints); sent all at once, the control plane holds every one of them, in
protobuf, gRPC and TLS buffers, until the streams drain: that sets its peak memory. Like
Istio's PILOT_PUSH_THROTTLE, at most ``limit`` full pushes are unanswered at a time; the rest
go out as answers come in. Deltas are small and never wait.
"""

from __future__ import annotations

from collections.abc import Callable


class FullPushes:
    """The proxies with a full snapshot in flight, and those waiting for room to get theirs."""

    def __init__(self, limit: int, clock: Callable[[], float], timeout: float) -> None:
        self.limit = limit
        self._clock = clock
        self._timeout = timeout  # an answer overdue this long no longer takes room
        self._in_flight: dict[str, float] = {}  # name -> when its full snapshot was sent
        self.waiting: dict[str, None] = {}  # names in line, oldest first

    def room(self) -> bool:
        """Whether another full snapshot may go out now."""
        if len(self._in_flight) >= self.limit:
            now = self._clock()
            for name in [n for n, at in self._in_flight.items() if now - at >= self._timeout]:
                del self._in_flight[name]
        return len(self._in_flight) < self.limit

    def sent(self, name: str, full: bool) -> None:
        self.waiting.pop(name, None)
        if full:
            self._in_flight[name] = self._clock()
        else:
            self._in_flight.pop(name, None)

    def done(self, name: str) -> None:
        """Its push was answered, or its stream ended."""
        self._in_flight.pop(name, None)

    def wait(self, name: str) -> None:
        self.waiting[name] = None

    def next_waiting(self) -> str | None:
        """The next in line, if there is room for it (taken out of the line)."""
        if not self.waiting or not self.room():
            return None
        name = next(iter(self.waiting))
        del self.waiting[name]
        return name

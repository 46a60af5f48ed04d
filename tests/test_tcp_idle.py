"""The TCP idle timer (proxy.tcpidle) on a fake clock: it never ends a connection before the
timeout has passed since its last byte, and ends it within an eighth of the timeout after."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

from hypothesis import given
from hypothesis import strategies as st

from proxy.tcpidle import CHECKS, IdleTimer

TIMEOUT = 8.0


class FakeHandle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """The two loop methods the timer uses, on a clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, FakeHandle, Callable[[], None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> FakeHandle:
        handle = FakeHandle()
        heapq.heappush(self._timers, (when, next(self._order), handle, callback))
        return handle

    def run_until(self, end: float) -> None:
        while self._timers and self._timers[0][0] <= end:
            when, _, handle, callback = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not handle.cancelled:
                callback()
        self.now = max(self.now, end)

    def pending(self) -> int:
        return sum(not h.cancelled for _, _, h, _ in self._timers)


class FakeSession:
    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.app_bytes = 0
        self.mesh_bytes = 0
        self.ended: tuple[str, float] | None = None

    def fail(self, reason: str) -> None:
        assert self.ended is None
        self.ended = (reason, self.loop.now)


def start() -> tuple[FakeLoop, FakeSession, IdleTimer]:
    loop = FakeLoop()
    session = FakeSession(loop)
    timer = IdleTimer(session, TIMEOUT, loop)  # type: ignore[arg-type]
    return loop, session, timer


def test_a_connection_idle_from_the_start_ends_at_the_timeout() -> None:
    """No byte at all: ended `idle_timeout` at the timeout, not a check before."""
    loop, session, _ = start()
    loop.run_until(TIMEOUT - 0.001)
    assert session.ended is None
    loop.run_until(TIMEOUT)
    assert session.ended == ("idle_timeout", TIMEOUT)
    assert loop.pending() == 0


@given(st.lists(st.tuples(st.floats(0.01, 20.0), st.booleans()), max_size=12))
def test_it_ends_between_one_and_one_eighth_timeouts_after_the_last_byte(
        gaps: list[tuple[float, bool]]) -> None:
    """Bytes either way at any times (gaps under the timeout keep it open): the end comes no
    sooner than the timeout after the last byte and no later than an eighth more."""
    loop, session, _ = start()
    last = 0.0
    for gap, from_app in gaps:
        loop.run_until(last + gap)
        if session.ended is not None:
            break
        if from_app:
            session.app_bytes += 1
        else:
            session.mesh_bytes += 1
        last = loop.now
    loop.run_until(last + 2 * TIMEOUT)
    assert session.ended is not None
    reason, at = session.ended
    assert reason == "idle_timeout"
    assert last + TIMEOUT <= at <= last + TIMEOUT + TIMEOUT / CHECKS + 1e-9


def test_a_cancelled_timer_never_fires() -> None:
    """The session ended on its own: the timer is cancelled and ends nothing later."""
    loop, session, timer = start()
    loop.run_until(TIMEOUT / 2)
    timer.cancel()
    loop.run_until(10 * TIMEOUT)
    assert session.ended is None and loop.pending() == 0

"""Test fakes shared by unit tests: a manual clock, an endpoint."""


class FakeClock:
    """A monotonic clock that only moves when told to; call it like ``time.monotonic``."""

    __slots__ = ("now",)

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (never backward)."""
        if seconds < 0:
            raise ValueError("a monotonic clock cannot go back")
        self.now += seconds


class Ep:
    """An endpoint as a balancer sees it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.active_requests = 0

    def __repr__(self) -> str:
        return self.name

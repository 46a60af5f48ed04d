"""The injected time source shared by the policy primitives."""

from collections.abc import Callable

# Monotonic seconds (``time.monotonic`` in production, a fake in tests).
Clock = Callable[[], float]

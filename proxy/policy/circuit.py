"""Connection-pool limits (Envoy-style circuit breaking): counters that refuse work past a limit."""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConnectionPoolLimits:
    """Per-destination limits; ``max_requests_per_connection = 0`` means unlimited."""

    max_connections: int = 1024
    max_pending: int = 1024
    max_concurrent_requests: int = 1024
    max_requests_per_connection: int = 0

    def __post_init__(self) -> None:
        if min(self.max_connections, self.max_pending, self.max_concurrent_requests) < 0:
            raise ValueError(f"limits must be >= 0: {self}")
        if self.max_requests_per_connection < 0:
            raise ValueError(f"max_requests_per_connection must be >= 0: {self}")


class Circuit:
    """Live counters against ``ConnectionPoolLimits``; a refusal is an overflow (503
    ``circuit_open``/"upstream overflow" at the edge) and is counted for metrics.

    Every successful ``try_*`` must be paired with its release call; releasing more than was
    taken raises, because a drifting counter would silently open or disable the breaker.
    """

    __slots__ = (
        "active_connections",
        "active_requests",
        "connection_overflow",
        "limits",
        "pending",
        "pending_overflow",
        "request_overflow",
    )

    def __init__(self, limits: ConnectionPoolLimits) -> None:
        self.limits = limits
        self.active_requests = 0
        self.pending = 0
        self.active_connections = 0
        self.request_overflow = 0
        self.pending_overflow = 0
        self.connection_overflow = 0

    @property
    def overflow_total(self) -> int:
        """All refusals, of every kind."""
        return self.request_overflow + self.pending_overflow + self.connection_overflow

    def try_start_request(self) -> bool:
        """Admit one more concurrent request, unless at ``max_concurrent_requests``."""
        if self.active_requests >= self.limits.max_concurrent_requests:
            self.request_overflow += 1
            return False
        self.active_requests += 1
        return True

    def finish_request(self) -> None:
        """Release a request admitted by ``try_start_request``."""
        if self.active_requests <= 0:
            raise RuntimeError("finish_request without a started request")
        self.active_requests -= 1

    def try_queue_pending(self) -> bool:
        """Let one more request wait for a connection, unless at ``max_pending``."""
        if self.pending >= self.limits.max_pending:
            self.pending_overflow += 1
            return False
        self.pending += 1
        return True

    def dequeue_pending(self) -> None:
        """Release a waiting slot taken by ``try_queue_pending``."""
        if self.pending <= 0:
            raise RuntimeError("dequeue_pending without a queued request")
        self.pending -= 1

    def try_open_connection(self) -> bool:
        """Allow one more upstream connection, unless at ``max_connections``."""
        if self.active_connections >= self.limits.max_connections:
            self.connection_overflow += 1
            return False
        self.active_connections += 1
        return True

    def close_connection(self) -> None:
        """Release a connection allowed by ``try_open_connection``."""
        if self.active_connections <= 0:
            raise RuntimeError("close_connection without an open connection")
        self.active_connections -= 1

    def connection_exhausted(self, requests_served: int) -> bool:
        """Whether a connection that served ``requests_served`` requests must not be reused."""
        limit = self.limits.max_requests_per_connection
        return limit > 0 and requests_served >= limit

"""The idle timeout of a TCP service's connection, on the caller's sidecar (Envoy's TCP proxy
`idle_timeout`, Istio's `connectionPool.tcp.idleTimeout`)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.tcprelay import TcpSession

# Checks per timeout: the connection closes between 1 and 1 + 1/CHECKS timeouts after its last
# byte, never before one.
CHECKS = 8


class IdleTimer:
    """Ends a session (`idle_timeout`) once no byte moved either way for ``timeout`` seconds.

    Progress is read from the byte counts the session keeps anyway, by one timer that wakes
    CHECKS times per timeout: the byte path pays nothing, where re-arming a timer per read
    would cost a heap operation per chunk.
    """

    __slots__ = ("_handle", "_moved", "_since", "loop", "session", "step", "timeout")

    def __init__(self, session: TcpSession, timeout: float,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.session = session
        self.timeout = timeout
        self.step = timeout / CHECKS
        self.loop = loop
        self._moved = session.app_bytes + session.mesh_bytes
        self._since = loop.time()  # when a check last saw bytes move (or the start)
        self._handle: asyncio.TimerHandle | None = loop.call_at(self._since + self.step,
                                                                 self._check)

    def _check(self) -> None:
        session = self.session
        now = self.loop.time()
        moved = session.app_bytes + session.mesh_bytes
        if moved != self._moved:
            self._moved, self._since = moved, now
        elif now - self._since >= self.timeout:
            self._handle = None
            session.fail("idle_timeout")
            return
        self._handle = self.loop.call_at(min(now + self.step, self._since + self.timeout),
                                         self._check)

    def cancel(self) -> None:
        """The session ended: no more checks (and no reference kept to it)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

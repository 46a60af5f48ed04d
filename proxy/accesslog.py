"""The access log's sink: the event loop batches lines, a writer thread does the blocking I/O.

Writing each line to stdout from the event loop cost a ``write`` syscall per request, and a
reader that stops reading (a full pipe: a stuck log shipper, a paused terminal) froze the whole
proxy inside that write. Here ``write`` appends to a batch on the loop; the batch goes to a
writer thread when it reaches ``BATCH`` characters or ``interval`` seconds after its first line
(Envoy flushes its access logs from a thread on a timer and a size too), so the thread wakes a
few times a second rather than per request, which would cost more in GIL hand-offs than the
write it saves. While the thread is stuck, at most ``limit`` characters wait; lines beyond that
are dropped and counted (``ami_access_log_dropped_lines_total``). ``aclose`` writes what is
left, with a deadline, when the proxy exits.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Iterator
from typing import TextIO

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

LIMIT = 1 << 20  # characters waiting (batched or handed over) before lines are dropped
BATCH = 64 * 1024  # characters that send a batch to the writer at once
INTERVAL = 0.1  # seconds from a batch's first line to its hand-over, at the latest


class AccessLogSink:
    """Lines to one stream; ``write`` on the event loop, the I/O on a thread of its own."""

    def __init__(self, stream: TextIO, *, limit: int = LIMIT, batch: int = BATCH,
                 interval: float = INTERVAL) -> None:
        self._stream = stream
        self._limit, self._batch, self._interval = limit, batch, interval
        # the loop's side
        self._lines: list[str] = []
        self._size = 0  # characters in _lines
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._dropped_full = 0
        # shared with the writer thread, under _ready
        self._ready = threading.Condition(threading.Lock())
        self._batches: deque[tuple[list[str], int]] = deque()
        self._handed = 0  # characters handed over and not written yet
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dropped_broken = 0  # the writer's count: lines the stream refused
        self._broken = False  # the writer's: the stream refused a write (its reader is gone)

    @property
    def dropped(self) -> int:
        """Lines lost: no room while the reader lagged, refused by the stream, or after close."""
        return self._dropped_full + self._dropped_broken

    def write(self, line: str) -> None:
        """Queue one line (ending in a newline). On the event loop; never blocks on I/O."""
        size = self._size + len(line)
        if self._closing or self._handed + size > self._limit:
            self._dropped_full += 1  # (_handed read without the lock: a moment stale at most)
            return
        self._lines.append(line)
        self._size = size
        if size >= self._batch:
            self._hand_over()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval,
                                                                self._hand_over)

    def _hand_over(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._lines:
            return
        with self._ready:
            self._batches.append((self._lines, self._size))
            self._handed += self._size
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ami-access-log",
                                                daemon=True)
                self._thread.start()
            self._ready.notify()
        self._lines, self._size = [], 0

    async def aclose(self, timeout: float = 2.0) -> None:
        """Write what is waiting (for at most ``timeout`` s: a stuck reader does not hold the
        proxy's exit) and stop the thread; later lines are dropped."""
        self._hand_over()
        self._closing = True
        with self._ready:
            self._stopping = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            await asyncio.to_thread(thread.join, timeout)
            if thread.is_alive():
                log.warning("access log: stdout's reader is stuck; %d characters not written",
                            self._handed)

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._batches and not self._stopping:
                    self._ready.wait()
                if not self._batches:
                    return  # stopping, and everything written
                lines, size = self._batches.popleft()
            written = self._write(lines)
            with self._ready:
                self._handed -= size
                if not written:
                    self._dropped_broken += len(lines)

    def _write(self, lines: list[str]) -> bool:
        if self._broken:
            return False
        try:
            self._stream.write("".join(lines))
            self._stream.flush()
            return True
        except (OSError, ValueError) as exc:  # EPIPE, a closed stream
            self._broken = True
            log.warning("access log: stdout refused a write (%s); dropping lines from now on",
                        exc)
            return False


class AccessLogCollector(Collector):
    """``ami_access_log_dropped_lines_total``: lines the access log could not write."""

    def __init__(self, sink: AccessLogSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "ami_access_log_dropped_lines",
            "Access log lines dropped: stdout's reader fell more than the buffer behind, or "
            "stopped reading.", value=self.sink.dropped)

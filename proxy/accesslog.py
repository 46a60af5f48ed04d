"""The access log's sink: the event loop hands lines to a writer thread, never blocks on stdout.

Writing each line to stdout from the event loop cost a ``write`` syscall per request, and a
reader that stops reading (a full pipe: a stuck log shipper, a paused terminal) froze the whole
proxy inside that write. Here ``write`` only appends to a buffer; one thread writes what has
gathered in a batch. While the thread is stuck, at most ``limit`` characters wait; lines beyond
that are dropped and counted (``ami_access_log_dropped_lines_total``), as Envoy's access log
flushes from its own thread and Linkerd's drops when its buffer is full. ``close`` writes what
is left, with a deadline, when the proxy exits.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import TextIO

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 1 << 20  # characters waiting for the writer before lines are dropped


class AccessLogSink:
    """Lines to one stream, written by a thread of their own (started on the first line)."""

    def __init__(self, stream: TextIO, limit: int = DEFAULT_LIMIT) -> None:
        self._stream = stream
        self._limit = limit
        self._lines: list[str] = []
        self._size = 0  # characters in _lines
        self._ready = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._closing = False
        self._broken = False  # the stream refused a write (its reader is gone): drop quietly
        self.dropped = 0  # lines lost: buffer full, the stream broken, or after close

    def write(self, line: str) -> None:
        """Queue one line (ending in a newline); called on the event loop, never blocks on I/O."""
        with self._ready:
            if self._closing or self._size + len(line) > self._limit:
                self.dropped += 1
                return
            self._lines.append(line)
            self._size += len(line)
            if len(self._lines) == 1:  # the writer may be waiting for this; busy, it comes back
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="ami-access-log",
                                                    daemon=True)
                    self._thread.start()
                self._ready.notify()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most ``timeout`` s: a stuck reader does not hold the
        proxy's exit) and stop the thread; later lines are dropped."""
        with self._ready:
            self._closing = True
            self._ready.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("access log: the reader of stdout is stuck; %d lines not written",
                            len(self._lines))

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._lines and not self._closing:
                    self._ready.wait()
                lines, self._lines, self._size = self._lines, [], 0
                if not lines:
                    return  # closing, and nothing left
            self._write(lines)

    def _write(self, lines: list[str]) -> None:
        if not self._broken:
            try:
                self._stream.write("".join(lines))
                self._stream.flush()
                return
            except (OSError, ValueError) as exc:  # EPIPE, a closed stream
                self._broken = True
                log.warning("access log: stdout refused a write (%s); dropping lines from now "
                            "on", exc)
        with self._ready:  # write() counts too, on the loop's thread
            self.dropped += len(lines)


class AccessLogCollector(Collector):
    """``ami_access_log_dropped_lines_total``: lines the access log could not write."""

    def __init__(self, sink: AccessLogSink) -> None:
        self.sink = sink

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "ami_access_log_dropped_lines",
            "Access log lines dropped: stdout's reader fell more than the buffer behind, or "
            "stopped reading.", value=self.sink.dropped)

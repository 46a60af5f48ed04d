"""Open-loop fixed-rate HTTP/1.1 load generator; latency counts from each request's scheduled time.

Run as `python -m bench.loadgen --port P ...`; prints one JSON object. Measuring from the
scheduled (not the actual) send time avoids coordinated omission: a stalled server is charged
for every request that queued behind the stall, as wrk2 does.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from collections.abc import Callable
from typing import Any, cast

import httptools

from bench.schedule import FixedRateSchedule
from bench.stats import summarize

Clock = Callable[[], float]
# Timers fire with ~1 ms granularity; within this window of the next send we spin on the loop.
_SPIN_WINDOW_S = 0.002


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying at most one request at a time (no pipelining)."""

    def __init__(self, gen: FixedRateRun) -> None:
        self._gen = gen
        self._parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.scheduled: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.close()

    def on_message_complete(self) -> None:
        scheduled, self.scheduled = self.scheduled, None
        if scheduled is not None:
            self._gen.on_response(self, scheduled, self._parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._gen.on_lost(self)

    def send(self, scheduled: float, request: bytes) -> None:
        assert self.transport is not None
        self.scheduled = scheduled
        self.transport.write(request)


class FixedRateRun:
    """Sends `rate` requests/s over `connections` keep-alive connections for `duration` s."""

    def __init__(
        self,
        port: int,
        *,
        rate: float,
        connections: int,
        duration: float,
        warmup: float = 0.0,
        host: str = "127.0.0.1",
        host_header: str = "backend",
        clock: Clock = time.perf_counter,
    ) -> None:
        self._addr = (host, port)
        self._rate = rate
        self._nconns = connections
        self._duration = duration
        self._warmup = warmup
        self._clock = clock
        self._request = f"GET / HTTP/1.1\r\nHost: {host_header}\r\n\r\n".encode()
        self._idle: list[_Conn] = []
        self._pending: collections.deque[float] = collections.deque()
        self._latencies: list[float] = []
        self._errors = 0
        self._finished = 0
        self._measure_from = 0.0
        self._total = 0
        self._done: asyncio.Future[None] | None = None
        self._closing = False

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: _Conn(self), *self._addr)
        self._dispatch_to(conn)

    def _dispatch_to(self, conn: _Conn) -> None:
        if self._pending and conn.transport is not None:
            conn.send(self._pending.popleft(), self._request)
        else:
            self._idle.append(conn)

    def _enqueue(self, scheduled: float) -> None:
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None:
                conn.send(scheduled, self._request)
                return
        self._pending.append(scheduled)

    def _finish_one(self) -> None:
        self._finished += 1
        if self._finished >= self._total and self._done is not None and not self._done.done():
            self._done.set_result(None)

    def on_response(self, conn: _Conn, scheduled: float, status: int) -> None:
        """Record one response and hand the connection the next queued request."""
        if status != 200:
            self._errors += 1
        elif scheduled >= self._measure_from:
            self._latencies.append(self._clock() - scheduled)
        self._finish_one()
        self._dispatch_to(conn)

    def on_lost(self, conn: _Conn) -> None:
        """A dropped connection fails its in-flight request and is replaced."""
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.scheduled is not None:
            self._errors += 1
            self._finish_one()
        if not self._closing:
            asyncio.get_running_loop().create_task(self._connect())

    async def run(self) -> dict[str, Any]:
        """Connect, send on schedule, wait for the stragglers; return counts and percentiles."""
        self._done = asyncio.get_running_loop().create_future()
        await asyncio.gather(*(self._connect() for _ in range(self._nconns)))
        start = self._clock() + 0.01
        self._measure_from = start + self._warmup
        self._total = max(1, round(self._rate * (self._warmup + self._duration)))
        schedule = FixedRateSchedule(start, self._rate, self._total)
        sent = 0
        while sent < self._total:
            now = self._clock()
            due = schedule.due_count(now)
            for index in range(sent, due):
                self._enqueue(schedule.time_of(index))
            sent = due
            wait = schedule.time_of(sent) - self._clock()
            await asyncio.sleep(wait - _SPIN_WINDOW_S if wait > 2 * _SPIN_WINDOW_S else 0)
        try:
            await asyncio.wait_for(asyncio.shield(self._done), timeout=5.0 + self._duration)
        except TimeoutError:
            self._errors += self._total - self._finished
        elapsed = self._clock() - start
        self._closing = True
        for conn in self._idle:
            if conn.transport is not None:
                conn.transport.close()
        return {
            "requests": self._total,
            "errors": self._errors,
            "achieved_rps": self._finished / elapsed if elapsed > 0 else 0.0,
            "latency_ms": {k: v * 1000.0 for k, v in summarize(self._latencies).items()},
        }


def main(argv: list[str] | None = None) -> None:
    """CLI entry: run one fixed-rate measurement and print its JSON result."""
    ap = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--host-header", default="backend")
    args = ap.parse_args(argv)
    gen = FixedRateRun(
        args.port,
        rate=args.rate,
        connections=args.connections,
        duration=args.duration,
        warmup=args.warmup,
        host_header=args.host_header,
    )
    try:
        import uvloop

        result = uvloop.run(gen.run())
    except ImportError:
        result = asyncio.run(gen.run())
    print(json.dumps(result))


if __name__ == "__main__":
    main()

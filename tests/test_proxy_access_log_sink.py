"""The access log's writer thread: a stuck or gone stdout reader never stalls the proxy.

The sink's own behaviour is tested with a stream whose writes block or fail (the seam: the
stream it is given); the proxy's with a real process whose stdout is a pipe nobody reads.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import aiohttp

from proxy.accesslog import AccessLogSink
from tests.proxyharness import ProxyProcess, eventually, metric_value


class GatedStream:
    """A stream whose writes wait until ``gate`` is set (a reader that stopped reading)."""

    def __init__(self, fail: bool = False) -> None:
        self.gate = threading.Event()
        self.written: list[str] = []
        self.writing = threading.Event()  # a write is under way (blocked, until the gate)
        self.fail = fail

    def write(self, text: str) -> int:
        self.writing.set()
        if self.fail:
            raise BrokenPipeError(32, "Broken pipe")
        self.gate.wait(10)
        self.written.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def lines_of(stream: GatedStream) -> list[str]:
    return "".join(stream.written).splitlines()


async def test_lines_reach_the_stream_in_order_and_close_writes_the_rest() -> None:
    stream = GatedStream()
    stream.gate.set()
    sink = AccessLogSink(stream, batch=100, interval=3600)  # type: ignore[arg-type]
    for i in range(1000):
        sink.write(f"{i}\n")
    await sink.aclose()
    assert lines_of(stream) == [str(i) for i in range(1000)] and sink.dropped == 0
    assert len(stream.written) < 100  # in batches of ~100 characters, not a write per line
    sink.write("late\n")
    assert sink.dropped == 1 and "late" not in lines_of(stream)


async def test_a_batch_goes_out_after_the_interval_without_more_lines() -> None:
    stream = GatedStream()
    stream.gate.set()
    sink = AccessLogSink(stream, interval=0.05)  # type: ignore[arg-type]
    sink.write("alone\n")
    await eventually(lambda: stream.written == ["alone\n"], what="the lone line written")
    await sink.aclose()


async def test_a_stuck_reader_costs_lines_past_the_limit_not_the_caller() -> None:
    """While the stream blocks, write() returns at once; what exceeds the limit is dropped
    and counted; once the reader is back, everything kept is written, in order."""
    stream = GatedStream()
    sink = AccessLogSink(stream, limit=100, batch=1)  # type: ignore[arg-type]
    sink.write("first\n")  # a batch of its own (batch=1): the thread takes it and sticks
    assert await asyncio.to_thread(stream.writing.wait, 5)
    for i in range(50):  # 10 characters each: 9 fit beside "first\n" in the limit
        sink.write(f"line-{i:04}\n")
    # Had write() waited for the stuck stream, the gate's 10 s would have passed and "first"
    # would be written by now.
    assert stream.written == [] and sink.dropped == 41
    stream.gate.set()
    await sink.aclose()
    assert lines_of(stream) == ["first", *(f"line-{i:04}" for i in range(9))]


async def test_close_gives_up_on_a_stuck_reader_after_its_timeout() -> None:
    stream = GatedStream()
    sink = AccessLogSink(stream, batch=1)  # type: ignore[arg-type]
    sink.write("x\n")
    assert await asyncio.to_thread(stream.writing.wait, 5)
    await sink.aclose(timeout=0.2)
    assert stream.written == []  # aclose() returned without waiting out the gate's 10 s
    stream.gate.set()  # let the thread end


async def test_a_broken_stream_drops_and_counts_without_raising() -> None:
    stream = GatedStream(fail=True)
    sink = AccessLogSink(stream, batch=1)  # type: ignore[arg-type]
    sink.write("a\n")
    sink.write("b\n")
    await sink.aclose()
    assert sink.dropped == 2 and stream.written == []


async def test_a_proxy_whose_stdout_nobody_reads_keeps_serving(tmp_path: Path,
                                                                echo: int) -> None:
    """stdout is a pipe nobody reads: its 64 KiB fill after ~30 requests with 2 KB paths.
    Before, the proxy froze in its next write (every request timed out); now requests keep
    being answered, the lines past the buffer are counted as dropped, and SIGTERM still ends
    the proxy promptly."""
    proxy = ProxyProcess(tmp_path, {"echo": [echo]}, args=("--access-log", "on"))
    os.mkfifo(proxy.stdout_path)
    reader = os.open(proxy.stdout_path, os.O_RDONLY | os.O_NONBLOCK)  # open, never read
    try:
        proxy.start()
        path = "/" + "x" * 2000
        timeout = aiohttp.ClientTimeout(total=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            for _ in range(800):  # ~1.7 MB of log lines: the pipe and the 1 MiB buffer full
                async with session.get(f"http://127.0.0.1:{proxy.outbound}{path}",
                                       headers={"Host": "echo"}) as resp:
                    assert resp.status == 200
                    await resp.read()
        metrics = await proxy.metrics()
        assert metric_value(metrics, "ami_access_log_dropped_lines_total") > 0
        assert metric_value(metrics, "ami_requests_total", response_code="200") >= 800
        assert proxy.stop() == 0  # by itself (stop() kills after 10 s: -9)
    finally:
        proxy.stop()
        os.close(reader)


async def test_the_last_lines_are_written_when_the_proxy_exits(tmp_path: Path,
                                                               echo: int) -> None:
    """Requests answered right before SIGTERM still have their lines in the log."""
    proxy = ProxyProcess(tmp_path, {"echo": [echo]}, args=("--access-log", "on")).start()
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(200):
                async with session.get(f"http://127.0.0.1:{proxy.outbound}/exit-{i}",
                                       headers={"Host": "echo"}) as resp:
                    assert resp.status == 200
        await asyncio.to_thread(proxy.stop)
    finally:
        proxy.stop()
    paths = [json.loads(line)["path"] for line in proxy.stdout().splitlines()
             if line.startswith("{")]
    assert paths == [f"/exit-{i}" for i in range(200)]

"""The benchmark harness: percentile math, the fixed-rate generator, wrk and h2load parsing,
smoke runs of the HTTP/1.1 and HTTP/2 paths."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.h2load import h2load_argv, parse_h2load, read_log
from bench.loadgen import FixedRateRun
from bench.report import added_p99, ratios
from bench.rounds import median_result
from bench.runner import PathResult
from bench.schedule import FixedRateSchedule
from bench.stats import percentile, summarize
from bench.tools import missing_tools
from bench.wrk import parse_wrk

REPO = Path(__file__).resolve().parent.parent

WRK_OUTPUT = """Running 1s test @ http://127.0.0.1:18080/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   311.84us  301.58us   4.49ms   95.49%
    Req/Sec    74.01k    22.15k   95.15k    70.00%
  Latency Distribution
     50%  217.00us
     75%  372.00us
     90%  528.00us
     99%    1.56ms
  73743 requests in 1.00s, 82.56MB read
Requests/sec:  73660.79
Transfer/sec:     82.47MB
"""

H2LOAD_OUTPUT = """starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0.5s of warm-up time and 1s of \
main duration for measurements.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 1.50s, 42829.00 req/s, 44.67MB/s
requests: 42829 total, 42829 started, 42829 done, 42829 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 42830 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 44.67MB (46843187) total, 3.06MB (3204709) headers (space savings 49.01%), 60.77MB \
(63721472) data
                     min         max         mean         sd        +/- sd
time for request:       41us      3.97ms       720us       305us    73.78%
time for connect:        0us         0us         0us         0us     0.00%
time to 1st byte:        0us         0us         0us         0us     0.00%
req/s           :   10576.01    10846.60    10706.04      110.64    50.00%
"""


def test_percentile_is_nearest_rank() -> None:
    """p50/p90/p99 of 1..100 are 50/90/99 and p100 is the maximum."""
    samples = [float(i) for i in range(1, 101)]
    assert [percentile(samples, p) for p in (50, 90, 99, 100)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([7.0], 99) == 7.0


def test_summarize_sorts_and_rejects_nothing() -> None:
    """summarize sorts its input first and returns {} for no samples."""
    assert summarize([3.0, 1.0, 2.0, 4.0]) == {"p50": 2.0, "p90": 4.0, "p99": 4.0, "max": 4.0}
    assert summarize([]) == {}
    with pytest.raises(ValueError):
        percentile([], 50)


def test_schedule_counts_due_requests_on_a_fake_clock() -> None:
    """Request i is due at start + i/rate, and the count stops at the total."""
    sched = FixedRateSchedule(start=10.0, rate=1000.0, total=5)
    assert sched.due_count(9.9999) == 0
    assert sched.due_count(10.0) == 1
    assert sched.due_count(10.0015) == 2
    assert sched.due_count(10.002) == 3
    assert sched.due_count(99.0) == 5
    assert sched.time_of(3) == pytest.approx(10.003)


def test_parse_wrk_reads_rate_total_and_percentiles() -> None:
    """The captured wrk report gives req/s, the request count and percentiles in ms."""
    result = parse_wrk(WRK_OUTPUT)
    assert result.rps == pytest.approx(73660.79)
    assert result.requests == 73743
    assert result.latency_ms == pytest.approx(
        {"p50": 0.217, "p75": 0.372, "p90": 0.528, "p99": 1.56}
    )
    assert (result.socket_errors, result.non_2xx) == (0, 0)


def test_parse_wrk_counts_errors_and_rejects_garbage() -> None:
    """Socket errors and non-2xx lines are summed; text without a rate is an error."""
    text = WRK_OUTPUT.replace(
        "Requests/sec:",
        "  Socket errors: connect 1, read 2, write 0, timeout 3\n"
        "  Non-2xx or 3xx responses: 4\nRequests/sec:",
    )
    result = parse_wrk(text)
    assert (result.socket_errors, result.non_2xx) == (6, 4)
    with pytest.raises(ValueError):
        parse_wrk("connection refused")


def test_parse_h2load_reads_rate_counts_and_request_times() -> None:
    """h2load's report gives req/s, done requests, failures and min/max/mean/sd (no percentiles)."""
    result = parse_h2load(H2LOAD_OUTPUT)
    assert (result.rps, result.requests, result.failed, result.non_2xx) == (42829.0, 42829, 0, 0)
    assert result.latency_ms == pytest.approx(
        {"min": 0.041, "max": 3.97, "mean": 0.72, "sd": 0.305}
    )
    bad = H2LOAD_OUTPUT.replace("0 failed", "7 failed").replace("0 4xx, 0 5xx", "2 4xx, 3 5xx")
    assert (parse_h2load(bad).failed, parse_h2load(bad).non_2xx) == (7, 5)
    with pytest.raises(ValueError):
        parse_h2load("connect to 127.0.0.1 failed")


def test_h2load_argv_uses_millisecond_durations_and_the_authority() -> None:
    """Fractional durations go as `NNNms` (h2load rejects "1.5"); Ami routes by :authority."""
    argv = h2load_argv(8080, 1.5, connections=16, streams=32, rps_per_connection=62.5,
                       log_file=Path("/tmp/x.log"))
    assert argv[1:6] == ("-t1", "-c16", "-m32", "-D", "1500ms")
    assert "--rps=62.5" in argv and "/tmp/x.log" in argv
    assert argv[-3:] == ("-H", ":authority: backend", "http://127.0.0.1:8080/")
    assert "--warm-up-time" in h2load_argv(8080, 3, warmup_s=0.5)


def test_read_log_drops_the_warm_up_and_failures(tmp_path: Path) -> None:
    """Latencies (µs -> ms) of 2xx lines sent at least skip_s after the first request."""
    log = tmp_path / "h2load.log"
    t0 = 1_700_000_000_000_000
    log.write_text(
        f"{t0}\t200\t9000\n"  # warm-up
        f"{t0 + 600_000}\t200\t250\n"
        f"{t0 + 700_000}\t503\t100\n"  # not a 2xx
        f"{t0 + 800_000}\t200\t1500\n"
    )
    assert read_log(log, skip_s=0.5) == [0.25, 1.5]
    assert len(read_log(log)) == 3


def test_h2_ratio_and_added_p99_use_the_h2_floor() -> None:
    """h2_one_hop_vs_nginx = ami-1hop-h2 / nginx-h2c; an h2 path's +p99 is over nginx-h2c's."""
    results = {
        "direct": PathResult("direct", rps=9000.0, latency_ms={"p99": 0.5}),
        "nginx-h2c": PathResult("nginx-h2c", rps=4000.0, latency_ms={"p99": 2.0}, protocol="h2"),
        "ami-1hop-h2": PathResult(
            "ami-1hop-h2", rps=1000.0, latency_ms={"p99": 5.0}, protocol="h2"
        ),
    }
    assert ratios(results) == {"h2_one_hop_vs_nginx": pytest.approx(0.25)}
    assert added_p99(results, "ami-1hop-h2") == pytest.approx(3.0)
    assert added_p99(results, "nginx-h2c") is None


def test_ratios_need_both_paths() -> None:
    """one_hop_vs_nginx is ami-1hop rps over nginx rps, absent when a side is missing."""
    results = {
        "nginx": PathResult("nginx", rps=1000.0),
        "ami-1hop": PathResult("ami-1hop", rps=800.0),
        "nginx-pair-mtls": PathResult("nginx-pair-mtls", rps=500.0),
    }
    assert ratios(results) == {"one_hop_vs_nginx": pytest.approx(0.8)}


def test_median_result_ignores_failed_rounds() -> None:
    """Rounds combine by per-figure median over the measured rounds; errors add up."""
    rounds = [
        PathResult("nginx", rps=100.0, latency_ms={"p99": 3.0}, rss_mb=6.0, errors=1,
                   neighbour_cpu=0.5),
        PathResult("nginx", error="exited under load"),
        PathResult("nginx", rps=300.0, latency_ms={"p99": 1.0}, rss_mb=8.0, neighbour_cpu=0.0),
        PathResult("nginx", rps=200.0, latency_ms={"p99": 2.0}, rss_mb=7.0, neighbour_cpu=0.1),
    ]
    combined = median_result(rounds)
    assert (combined.rps, combined.latency_ms, combined.rss_mb) == (200.0, {"p99": 2.0}, 7.0)
    assert (combined.errors, combined.rounds, combined.error) == (1, 3, None)
    assert combined.neighbour_cpu == 0.1
    assert combined.spread == {"rps": [100.0, 300.0, 200.0], "p99_ms": [3.0, 1.0, 2.0],
                               "neighbour_cpu": [0.5, 0.0, 0.1]}
    assert median_result([rounds[1]]).error == "exited under load"


async def _stalling_server(stall_first_s: float) -> tuple[asyncio.Server, int]:
    """HTTP server answering 200 per request; its very first response is held back."""
    loop = asyncio.get_running_loop()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    state = {"first": True}

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport

        def data_received(self, data: bytes) -> None:
            assert isinstance(self.t, asyncio.Transport)
            for _ in range(data.count(b"\r\n\r\n")):
                if state["first"]:
                    state["first"] = False
                    loop.call_later(stall_first_s, self.t.write, response)
                else:
                    self.t.write(response)

    server = await loop.create_server(Echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_fixed_rate_run_sends_every_scheduled_request() -> None:
    """At 200 rps for 0.5 s (+0.1 s warm-up) all 120 requests complete without errors."""
    server, port = await _stalling_server(0.0)
    async with server:
        result = await FixedRateRun(port, rate=200.0, connections=4, duration=0.5, warmup=0.1).run()
    assert result["requests"] == 120
    assert result["errors"] == 0
    assert set(result["latency_ms"]) == {"p50", "p90", "p99", "max"}


async def test_fixed_rate_latency_counts_from_the_scheduled_time() -> None:
    """A 300 ms stall on the only connection shows in p90: queued requests are charged."""
    server, port = await _stalling_server(0.3)
    async with server:
        result = await FixedRateRun(port, rate=100.0, connections=1, duration=0.6).run()
    assert result["errors"] == 0
    # 30 of 60 requests queue behind the stall (waits of 10..300 ms); measured from their
    # actual send they would all look sub-millisecond.
    assert result["latency_ms"]["p90"] > 100.0
    assert result["latency_ms"]["max"] >= 290.0


def test_smoke_run_direct_path(tmp_path: Path) -> None:
    """`python -m bench --paths direct` writes results.json with a positive req/s."""
    missing = missing_tools(("nginx", "wrk"))
    if missing and os.environ.get("AMI_REQUIRE_TOOLS") != "1":
        pytest.skip(f"missing {', '.join(missing)}")
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--paths",
            "direct",
            "--duration",
            "1",
            "--json",
            str(out),
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert set(doc) == {"machine", "paths", "ratios"}
    direct = doc["paths"]["direct"]
    assert direct["rps"] > 0
    assert set(direct["latency_ms"]) >= {"p50", "p90", "p99"}
    assert direct["cpu_s_per_1000"] is None  # no proxy on the direct path
    assert direct["neighbour_cpu"] >= 0.0  # other processes' CPU during the fixed-rate run
    assert "direct" in proc.stdout


def test_the_logged_path_runs_only_when_named() -> None:
    from bench.__main__ import _parse

    assert "ami-1hop-logged" not in _parse([]).paths.split(",")
    h1 = _parse(["--paths", "h1"]).paths.split(",")
    assert "ami-1hop" in h1 and "ami-1hop-logged" not in h1
    assert _parse(["--paths", "nginx,ami-1hop-logged"]).paths == "nginx,ami-1hop-logged"


def test_smoke_run_logged_path(tmp_path: Path) -> None:
    """`--paths ami-1hop-logged`: the one-hop proxy writes an access log line per request."""
    missing = missing_tools(("nginx", "wrk"))
    if missing and os.environ.get("AMI_REQUIRE_TOOLS") != "1":
        pytest.skip(f"missing {', '.join(missing)}")
    out, run_dir = tmp_path / "results.json", tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--paths", "ami-1hop-logged", "--duration", "1",
         "--json", str(out), "--run-dir", str(run_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=90, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())["paths"]["ami-1hop-logged"]["rps"] > 0
    log = (run_dir / "ami-outbound-logged.log").read_text().splitlines()
    lines = [json.loads(line) for line in log if line.startswith("{")]
    assert len(lines) > 100  # the warm-up, wrk's run and the fixed-rate run, once stopped
    assert {(line["listener"], line["status"], line["destination_service"])
            for line in lines} == {("outbound", 200, "backend")}


H2_PATHS = ("nginx-h2c", "nginx-h2-proxy", "nginx-pair-h2-mtls", "ami-1hop-h2", "ami-2hop-h2-mtls")


def test_smoke_run_h2_paths(tmp_path: Path) -> None:
    """Every HTTP/2 path runs briefly under h2load and reports req/s, percentiles and no errors."""
    missing = missing_tools(("nginx", "wrk", "h2load"))
    if missing and os.environ.get("AMI_REQUIRE_TOOLS") != "1":
        pytest.skip(f"missing {', '.join(missing)}")
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--paths",
            "h2",  # the group: every HTTP/2 path
            "--duration",
            "1",
            "--json",
            str(out),
            "--run-dir",
            str(tmp_path / "run"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    for name in H2_PATHS:
        path = doc["paths"][name]
        assert "skipped" not in path and "error" not in path, (name, path)
        assert path["protocol"] == "h2"
        assert path["rps"] > 0, name
        assert path["errors"] == 0, (name, path)
        assert set(path["h2load_latency_ms"]) == {"min", "max", "mean", "sd"}, name
        if not path["latency_ms"]:
            # A path can fall behind a 1 s paced run until no request completes in the measured
            # second: the nginx pair, whose grpc_pass takes an upstream connection (an mTLS
            # handshake) per stream in flight, snowballs on one core (docs/benchmarks.md,
            # HTTP/2), and Ami's two HTTP/2 hops serve ~900 req/s at best, less on a loaded
            # machine. Then the run must show the rate was not kept.
            assert name in ("nginx-pair-h2-mtls", "ami-2hop-h2-mtls"), (name, path)
            assert path["fixed_rate"]["achieved_rps"] < 900, path
            continue
        assert set(path["latency_ms"]) >= {"p50", "p90", "p99"}, name
    assert doc["paths"]["nginx-h2c"]["cpu_s_per_1000"] is None  # the backend itself
    assert doc["paths"]["ami-1hop-h2"]["cpu_s_per_1000"] > 0
    assert set(doc["ratios"]) == {
        "h2_one_hop_vs_nginx",
        "h2_one_hop_vs_nginx_proxy",
        "h2_two_hop_mtls_vs_nginx",
    }

"""Running h2load (HTTP/2 load, nghttp2-client) and parsing its report and per-request log.

h2load plays wrk's part for the HTTP/2 paths: closed-loop throughput over a fixed duration
(`-D`), and a paced run (`--rps`, per connection) whose `--log-file` gives every request's
latency. Its own report has only min/max/mean/sd per request; the percentiles come from the log.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bench.tools import binary

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}
_FINISHED = re.compile(r"^finished in [\d.]+\w+, ([\d.]+) req/s", re.MULTILINE)
_REQUESTS = re.compile(
    r"^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
    r"(\d+) errored, (\d+) timeout",
    re.MULTILINE,
)
_STATUS = re.compile(r"^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", re.MULTILINE)
_TIME = r"([\d.]+)(us|ms|s)"
_REQ_TIME = re.compile(
    rf"^time for request:\s+{_TIME}\s+{_TIME}\s+{_TIME}\s+{_TIME}", re.MULTILINE
)


@dataclass(frozen=True, slots=True)
class H2loadResult:
    """What one h2load run measured (the main duration only, warm-up excluded)."""

    rps: float
    requests: int  # done
    failed: int  # includes errored and timed-out streams
    non_2xx: int
    latency_ms: dict[str, float]  # min, max, mean, sd: all h2load's report gives


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNITS_MS[unit]


def parse_h2load(text: str) -> H2loadResult:
    """Parse h2load's stdout; raise ValueError when it holds no result lines."""
    fin, req, status = _FINISHED.search(text), _REQUESTS.search(text), _STATUS.search(text)
    if fin is None or req is None or status is None:
        raise ValueError(f"not an h2load report:\n{text}")
    times = _REQ_TIME.search(text)
    latency: dict[str, float] = {}
    if times is not None:
        g = times.groups()
        latency = {
            key: _ms(g[2 * i], g[2 * i + 1]) for i, key in enumerate(("min", "max", "mean", "sd"))
        }
    return H2loadResult(
        rps=float(fin.group(1)),
        requests=int(req.group(3)),
        failed=int(req.group(5)),
        non_2xx=int(status.group(2)) + int(status.group(3)) + int(status.group(4)),
        latency_ms=latency,
    )


def _duration(seconds: float) -> str:
    # h2load takes integers or a unit suffix ("1500ms"), not "1.5".
    return f"{max(1, round(seconds * 1000))}ms"


def h2load_argv(
    port: int,
    duration_s: float,
    *,
    connections: int = 4,
    streams: int = 8,
    warmup_s: float = 0.0,
    rps_per_connection: float | None = None,
    log_file: Path | None = None,
    authority: str = "backend",
) -> tuple[str, ...]:
    """`h2load -t1 -cC -mM -D ... -H ':authority: backend' http://127.0.0.1:PORT/` (h2c)."""
    argv = [
        binary("h2load"),
        "-t1",
        f"-c{connections}",
        f"-m{streams}",
        "-D",
        _duration(duration_s),
    ]
    if warmup_s > 0:
        argv += ["--warm-up-time", _duration(warmup_s)]
    if rps_per_connection is not None:
        argv.append(f"--rps={rps_per_connection:g}")
    if log_file is not None:
        argv += ["--log-file", str(log_file)]
    argv += ["-H", f":authority: {authority}", f"http://127.0.0.1:{port}/"]
    return tuple(argv)


def run_h2load(argv: tuple[str, ...], timeout_s: float) -> H2loadResult:
    """Run an h2load command line and parse its report."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        detail = (out.stderr or out.stdout).strip()
        raise RuntimeError(f"h2load failed ({out.returncode}): {detail}")
    return parse_h2load(out.stdout)


def read_log(path: Path, skip_s: float = 0.0) -> list[float]:
    """Latencies in ms of the 2xx requests in an h2load --log-file, minus the first `skip_s`.

    Each line: start time (µs since the epoch), HTTP status, µs until the end of the response,
    counted from when h2load actually sent the request (not from a schedule). Requests sent in
    the first `skip_s` seconds (from the earliest start) are a warm-up and left out. Failures
    are counted by the report (`H2loadResult.failed`, `non_2xx`), not here.
    """
    rows: list[tuple[int, int, int]] = []
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 3:
            rows.append((int(fields[0]), int(fields[1]), int(fields[2])))
    if not rows:
        return []
    measure_from = min(start for start, _, _ in rows) + skip_s * 1e6
    return [
        micros / 1000.0
        for start, status, micros in rows
        if start >= measure_from and 200 <= status < 300
    ]

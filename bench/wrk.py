"""Running wrk (closed-loop throughput) and parsing its `--latency` report."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from bench.tools import binary

_UNITS_MS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
_PCT = re.compile(r"^\s*(\d+(?:\.\d+)?)%\s+([\d.]+)(us|ms|s|m)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_TOTAL = re.compile(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", re.MULTILINE)
_SOCKET = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.MULTILINE
)
_NON2XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


@dataclass(frozen=True, slots=True)
class WrkResult:
    """What one wrk run measured."""

    rps: float
    requests: int
    latency_ms: dict[str, float]
    socket_errors: int
    non_2xx: int


def parse_wrk(text: str) -> WrkResult:
    """Parse wrk's stdout; raise ValueError when it holds no Requests/sec line."""
    rps = _RPS.search(text)
    total = _TOTAL.search(text)
    if rps is None or total is None:
        raise ValueError(f"not a wrk report:\n{text}")
    latency = {
        f"p{float(pct):g}": float(value) * _UNITS_MS[unit]
        for pct, value, unit in _PCT.findall(text)
    }
    sock = _SOCKET.search(text)
    non2xx = _NON2XX.search(text)
    return WrkResult(
        rps=float(rps.group(1)),
        requests=int(total.group(1)),
        latency_ms=latency,
        socket_errors=sum(int(g) for g in sock.groups()) if sock else 0,
        non_2xx=int(non2xx.group(1)) if non2xx else 0,
    )


def wrk_argv(
    port: int,
    duration_s: float,
    *,
    connections: int = 32,
    threads: int = 1,
    host_header: str = "backend",
) -> tuple[str, ...]:
    """`wrk -t1 -c32 -dNs --latency -H 'Host: backend' http://127.0.0.1:PORT/`."""
    return (
        binary("wrk"),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        "--latency",
        "-H",
        f"Host: {host_header}",
        f"http://127.0.0.1:{port}/",
    )


def run_wrk(argv: tuple[str, ...], timeout_s: float) -> WrkResult:
    """Run a wrk command line and parse its report."""
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()}")
    return parse_wrk(out.stdout)

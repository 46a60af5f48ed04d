"""The soak harness: the memory-trend fit, and a short real soak through a sidecar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.churn import Kind, kinds, one
from bench.memtrend import trend
from bench.tools import missing_tools
from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent


def test_flat_series_with_noise_shows_no_growth() -> None:
    """Sawtooth noise of ±0.5 MiB around 30 MiB fits as flat: no growth, slope near zero."""
    samples = [(float(t), 30.0 + (0.5 if t % 2 else -0.5)) for t in range(0, 600, 5)]
    fit = trend(samples, warmup_s=60)
    assert abs(fit.growth_mb) < 0.01
    assert abs(fit.slope_mb_per_min) < 0.05
    assert fit.peak_mb == 30.5
    assert fit.samples == len([s for s in samples if s[0] >= 60])


def test_steady_leak_is_measured_and_warmup_is_ignored() -> None:
    """A 0.5 MiB/min leak after a warm-up jump reads as +0.5 MiB/min and ~4 MiB of growth."""
    warm = [(float(t), 10.0 + t) for t in range(0, 60, 5)]  # start-up growth, before warm-up
    leak = [(float(t), 70.0 + (t - 60) / 120.0) for t in range(60, 600, 5)]
    fit = trend(warm + leak, warmup_s=60)
    assert fit.slope_mb_per_min == pytest.approx(0.5, rel=1e-6)
    assert 3.5 < fit.growth_mb < 4.5
    assert fit.baseline_mb < 71.0


def test_trend_needs_samples_after_the_warmup() -> None:
    """One sample after warm-up cannot show a trend: a clear error, not a zero."""
    with pytest.raises(ValueError, match="warm-up"):
        trend([(0.0, 1.0), (70.0, 2.0)], warmup_s=60)


async def test_churn_counts_a_refused_connection_as_unexpected() -> None:
    """Nothing listening: the request's outcome is reported as not the expected one."""
    assert await one(free_port(), Kind("get", b"GET / HTTP/1.1\r\n\r\n", 200), 0) is False


def test_short_soak_through_the_mtls_pair(tmp_path: Path) -> None:
    """Steady load plus churn through two real sidecars with mTLS between: every request gets
    its expected answer, RSS is sampled, and neither sidecar holds a client connection after.

    The growth limit is loose here: a 20-second run measures the harness, not the figure
    (`make soak` runs ten minutes with the 2 MiB limit).
    """
    missing = missing_tools(("nginx",))
    if missing and os.environ.get("AMI_REQUIRE_TOOLS") != "1":
        pytest.skip(f"missing {', '.join(missing)}")
    out = tmp_path / "soak.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--path", "ami-2hop-mtls", "--minutes", "0.3",
         "--warmup", "5", "--interval", "1", "--rate", "200", "--churn", "16",
         "--max-growth-mb", "50", "--json", str(out), "--run-dir", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(out.read_text())
    assert doc["problems"] == []
    assert doc["steady"]["requests"] == 3600 and doc["steady"]["errors"] == 0
    assert set(doc["churn_sent"]) == {k.name for k in kinds("backend")}
    assert doc["churn_failed"] == {}
    assert doc["connections_after"] == {"ami-inbound": 0, "ami-outbound": 0}
    assert all(t["samples"] >= 10 for t in doc["trends"].values())
    assert "soak: PASS" in proc.stdout

"""The bench's neighbour meter: another process's CPU counts, the bench's own processes' do not."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.neighbours import NeighbourMeter, busy_seconds, own_seconds, plan_cpus

# Spins until it has used `cpu` seconds of CPU, then writes its total CPU time (start-up
# included) to `out`: a known amount of work, whatever the machine's load.
SPINNER = """
import sys, time
cpu, out = float(sys.argv[1]), sys.argv[2]
while time.process_time() < cpu:
    pass
with open(out + ".tmp", "w") as f:
    f.write(repr(time.process_time()))
import os
os.replace(out + ".tmp", out)
"""
# A neighbour: started through a shell that exits at once, so the spinner is re-parented away
# from this process (not a descendant, not reaped by it).
DETACHED = "setsid {py} -c '{code}' {cpu} {out} </dev/null >/dev/null 2>&1 &"
# /proc/stat and a process's times count whole ticks, each side rounded separately.
SLACK_S = 4 / os.sysconf("SC_CLK_TCK")


def _wait_for(path: Path, deadline_s: float = 60.0) -> float:
    end = time.monotonic() + deadline_s
    while not path.exists():
        assert time.monotonic() < end, f"{path} not written within {deadline_s}s"
        time.sleep(0.02)
    return float(path.read_text())


def test_busy_seconds_reads_the_chosen_cpus(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text(
        "cpu  900 9 90 5000 1 3 6 7 0 0\n"
        "cpu0 500 5 50 2500 1 1 2 3 0 0\n"
        "cpu1 400 4 40 2500 0 2 4 4 0 0\n"
        "intr 12345\n"
    )
    ticks = os.sysconf("SC_CLK_TCK")
    # user + nice + system + irq + softirq; idle, iowait and steal are not busy
    assert busy_seconds((0,), stat) * ticks == 500 + 5 + 50 + 1 + 2
    assert busy_seconds(None, stat) * ticks == (558 + 450)
    assert plan_cpus("0", "1") == (0, 1)
    assert plan_cpus("0,1", "2") == (0, 1, 2)
    assert plan_cpus(None, None) is None


def test_a_detached_process_counts_as_a_neighbour(tmp_path: Path) -> None:
    out = tmp_path / "spun"
    meter = NeighbourMeter()
    meter.start()
    subprocess.run(
        ["sh", "-c", DETACHED.format(py=sys.executable, code=SPINNER, cpu=0.5, out=out)],
        check=True,
    )
    spun = _wait_for(out)
    neighbours = meter.stop()
    assert spun >= 0.5
    assert neighbours >= spun - SLACK_S, (neighbours, spun)


def test_the_bench_own_children_do_not_count(tmp_path: Path) -> None:
    """A child that is still running and one already reaped (as the load generator is when
    the meter stops) are the bench's own time."""
    reaped, live = tmp_path / "reaped", tmp_path / "live"
    own0 = own_seconds()
    subprocess.run([sys.executable, "-c", SPINNER, "0.4", str(reaped)], check=True)
    child = subprocess.Popen([sys.executable, "-c", SPINNER + "\ntime.sleep(60)\n", "0.4",
                              str(live)])
    try:
        spun = _wait_for(reaped) + _wait_for(live)
        own = own_seconds() - own0
    finally:
        child.kill()
        child.wait()
    assert own >= spun - SLACK_S, (own, spun)

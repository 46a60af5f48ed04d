"""The test port allocator: runs side by side on one machine never hand out the same port."""

from __future__ import annotations

import subprocess
import sys

from tests import ports
from tests.proxyharness import REPO

# A run that starts at lease N (argv[1]), hands out 200 ports and holds them until stdin ends.
CHILD = """
import sys
import tests.ports as p
p._lease, p._next, p._end = int(sys.argv[1]), 0, 0
print(" ".join(str(p.free_port()) for _ in range(200)), flush=True)
sys.stdin.read()
"""


def _run(lease: int) -> tuple[subprocess.Popen[str], set[int]]:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(lease)], cwd=REPO, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    return proc, {int(p) for p in proc.stdout.readline().split()}


def test_two_runs_starting_at_the_same_lease_get_other_ports() -> None:
    """A second run walking the same ports as a first one still running skips the leases the
    first holds, so neither hands out a port the other's processes may be about to bind."""
    lease = 10 % ports.LEASES  # (leases this run holds are skipped by both alike)
    first, a = _run(lease)
    try:
        second, b = _run(lease)
        try:
            assert len(a) == len(b) == 200
            assert not a & b
        finally:
            second.communicate("", timeout=30)
    finally:
        first.communicate("", timeout=30)
    third, c = _run(lease)  # the first two ended: their leases are free again
    third.communicate("", timeout=30)
    assert c == a

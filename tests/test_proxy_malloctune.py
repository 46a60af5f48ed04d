"""The fixed glibc mmap threshold: large freed blocks go back to the OS instead of the heap."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Frees a 256 KiB block (which raises glibc's dynamic mmap threshold), allocates another and
# prints how many bytes of it glibc served with mmap (mallinfo2's hblkhd grows) - 0 means the
# heap took it, where uvloop's per-connection TLS buffers used to pile up.
_PROBE = """
import ctypes, sys
from proxy.malloctune import fix_mmap_threshold
if sys.argv[1] == "fix":
    assert fix_mmap_threshold()
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = MallInfo2
libc.free(libc.malloc(256 * 1024))
before = libc.mallinfo2().hblkhd
block = libc.malloc(256 * 1024)
print(libc.mallinfo2().hblkhd - before)
"""


def _glibc_with_mallinfo2() -> bool:
    libc = ctypes.CDLL(None)
    return hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallinfo2")


pytestmark = pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33")


def _mmapped_bytes_of_second_block(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         env=env, timeout=30, check=True)
    return int(out.stdout)


def test_without_the_fix_glibc_moves_large_blocks_into_the_heap() -> None:
    """The behaviour being fixed: after one free, a 256 KiB block no longer gets an mmap."""
    assert _mmapped_bytes_of_second_block("default") == 0


def test_with_the_fix_large_blocks_stay_in_mmap() -> None:
    """With the threshold fixed at 128 KiB, the second 256 KiB block is mmapped too."""
    assert _mmapped_bytes_of_second_block("fix") >= 256 * 1024


def test_an_operators_malloc_setting_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """MALLOC_MMAP_THRESHOLD_ in the environment means glibc already has a choice: no change."""
    from proxy.malloctune import fix_mmap_threshold

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert fix_mmap_threshold() is False

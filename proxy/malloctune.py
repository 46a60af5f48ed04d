"""A fixed glibc mmap threshold, so per-connection TLS buffers do not fragment the heap.

Why: uvloop gives every TLS connection a 256 KiB read buffer. glibc serves blocks that size
with mmap at first, but raises its mmap threshold as soon as one such block is freed, so later
buffers come from the heap; as pooled mTLS connections come and go, the heap fragments and the
sidecar's RSS climbed ~1 MiB a minute for as long as it ran (found by `make soak`). With a
fixed threshold, blocks of 128 KiB and more stay in mmap and go back to the OS when freed; the
cost is an mmap/munmap per TLS connection, none per request. Fixing it also stops glibc's
dynamic trim threshold, the same way `MALLOC_MMAP_THRESHOLD_` would.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
THRESHOLD = 128 * 1024


def fix_mmap_threshold(threshold: int = THRESHOLD) -> bool:
    """Set the threshold once at start; False when not glibc or the operator already chose."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False  # glibc read the operator's choice at start; keep it
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):
        return False  # musl, macOS: another allocator, other rules
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))

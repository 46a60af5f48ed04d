"""Notices that a file was rewritten or replaced, by a cheap look at its metadata on a timer."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger("ami.proxy")
Stamp = tuple[int, int, int, int]


def read_stamp(path: Path) -> Stamp:
    """What changes when a file is written in place (size, mtime) or renamed over (device,
    inode); OSError if it cannot be looked at (FileNotFoundError while it is missing)."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def file_stamp(path: Path) -> Stamp | None:
    """``read_stamp``, or None while the file is missing (an editor between moving the old one
    away and writing the new one)."""
    try:
        return read_stamp(path)
    except FileNotFoundError:
        return None


async def watch_file(path: Path, changed: Callable[[], Awaitable[object]], seen: Stamp | None, *,
                     interval: float = 1.0, settle: float = 0.2) -> None:
    """Await ``changed()`` each time ``path``'s stamp moves on from ``seen``, until cancelled.

    A change is acted on once the stamp holds still for ``settle`` seconds, so that a file
    being written in place (truncated, then written) is read whole, not half-way. A missing
    file is waited for (logged once if it stays missing for two looks): it is no change."""
    missing = 0
    while True:
        await asyncio.sleep(interval)  # the watch's period, not a wait for a condition
        stamp = file_stamp(path)
        if stamp is None:
            missing += 1
            if missing == 2:
                log.warning("%s is missing; the running config stays until it is back", path)
            continue
        missing = 0
        if stamp == seen:
            continue
        await asyncio.sleep(settle)  # debounce: a writer still at it moves the stamp again
        if file_stamp(path) != stamp:
            continue  # still changing: look again at the next tick
        seen = stamp
        await changed()

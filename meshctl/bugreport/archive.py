"""Write a bug report's members into one ``.tar.gz``, readable by its owner only."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path


def write_archive(path: Path, members: dict[str, bytes]) -> int:
    """Write ``members`` (path in the archive → bytes) to ``path``; its size in bytes.

    Written beside ``path`` and renamed into place, so an interrupted run leaves no half
    archive under the name; mode 0600, since it describes the whole mesh."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    now = time.time()
    try:
        with os.fdopen(fd, "wb") as raw, tarfile.open(fileobj=raw, mode="w:gz") as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = len(data), int(now), 0o644
                tar.addfile(info, io.BytesIO(data))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path.stat().st_size

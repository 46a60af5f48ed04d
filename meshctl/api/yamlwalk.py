"""The visible YAML files of a directory tree, as the config dir store and `apply -f DIR` see it."""

from __future__ import annotations

import os
from pathlib import Path

YAML_SUFFIXES = (".yaml", ".yml")


def walk_yaml(root: Path, unlisted: list[Path] | None = None) -> list[Path]:
    """Every visible ``*.yaml``/``*.yml`` name under ``root`` (dot-files and dot-directories
    skipped), relative to it, sorted. Symlinked directories are followed, as symlinked files
    are, but a directory already walked is not walked again (a link back up would never end);
    which path it is known by is the first in sorted order, the same on every walk.
    ``unlisted``: gets the directories that could not be listed (permission denied), relative
    to ``root`` (``.`` for itself): their files are unknown, not gone."""
    found = []
    walked: set[tuple[int, int]] = set()

    def failed(exc: OSError) -> None:
        if unlisted is not None and exc.filename is not None:
            unlisted.append(Path(os.path.relpath(exc.filename, root)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=failed, followlinks=True):
        try:
            info = os.stat(dirpath)
        except OSError:  # gone since it was listed
            dirnames[:] = []
            continue
        if (info.st_dev, info.st_ino) in walked:
            dirnames[:] = []
            continue
        walked.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.endswith(YAML_SUFFIXES) and not name.startswith("."):
                found.append(Path(dirpath, name).relative_to(root))
    return sorted(found)

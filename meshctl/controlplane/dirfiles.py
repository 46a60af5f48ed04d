"""File helpers for dirstore: bounded reads of regular files only, atomic writes, listing YAML
files, rewriting one document in place."""

from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml

from meshctl.api.yamlwalk import walk_yaml

_DOC_START = re.compile(r"^---(?:[ \t].*)?$")
MAX_FILE_BYTES = 1024 * 1024  # as the HTTP API's body limit (aiohttp's client_max_size)


class RefusedFile(ValueError):
    """A path that is not a regular file, or a file larger than MAX_FILE_BYTES."""


def is_hidden(rel: Path) -> bool:
    """Dot-files and dot-directories (state, temp files, .git) are never resources."""
    return any(part.startswith(".") for part in rel.parts)


def yaml_files(root: Path, unlisted: list[Path] | None = None) -> Iterator[Path]:
    """Every visible ``*.yaml``/``*.yml`` under ``root``, as paths relative to it, sorted
    (symlinked directories followed once; ``unlisted`` gets the directories that could not be
    listed: meshctl.api.yamlwalk)."""
    yield from walk_yaml(root, unlisted)


def read_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; RefusedFile otherwise.

    A FIFO, socket or device named *.yaml would block the event loop or never end: it is
    checked before opening (without blocking) and again on the open descriptor, and no more
    than ``limit + 1`` bytes are read. Symlinks are followed (ConfigMap mounts use them).
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise RefusedFile("not a regular file (a FIFO, socket or device?): not read")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RefusedFile("not a regular file (a FIFO, socket or device?): not read")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise RefusedFile(f"too large: {max(info.st_size, len(data))} bytes, the limit is "
                          f"{limit} (as for an API request body)")
    return data


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write via a temp file in the same directory, fsync, rename over ``path``, fsync the dir.

    Readers (and the file watcher) see the old content or the new, never a torn file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def remove_file(path: Path) -> None:
    """Unlink ``path`` durably (missing is fine)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)


def split_documents(text: str) -> list[str]:
    """Split a multi-document YAML text at ``---`` lines, keeping each part's own text.

    Parts that hold no document (blank, comments only) are kept too, so joining them back
    reproduces the file; callers skip them by loading each part.
    """
    parts: list[list[str]] = [[]]
    for line in text.splitlines(keepends=True):
        if _DOC_START.match(line.rstrip("\r\n")) and parts[-1]:
            parts.append([])
        parts[-1].append(line)
    return ["".join(p) for p in parts if p]


def rewrite_document(
    text: str,
    matches: Callable[[object], bool],
    replacement: str | None,
) -> str:
    """``text`` with the document that ``matches`` replaced by ``replacement`` (None: removed).

    Other documents keep their exact text and comments. If no document matches, the
    replacement is appended. Raises yaml.YAMLError if a part does not parse on its own.
    """
    out: list[str] = []
    done = False
    for part in split_documents(text):
        doc = yaml.safe_load(part)
        if doc is not None and not done and matches(doc):
            done = True
            if replacement is not None:
                out.append(_as_part(replacement, first=not out))
            continue
        out.append(part)
    if not done and replacement is not None:
        out.append(_as_part(replacement, first=not any(yaml.safe_load(p) for p in out)))
    result = "".join(p if p.endswith("\n") else p + "\n" for p in out)
    return "" if all(yaml.safe_load(p) is None for p in split_documents(result)) else result


def _as_part(doc_text: str, first: bool) -> str:
    return doc_text if first else "---\n" + doc_text

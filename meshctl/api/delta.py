"""Applies a delta push (ConfigMessage.base_version + delta) to the base snapshot's bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from meshctl.api import mesh_pb2


class DeltaError(ValueError):
    """A delta that does not give the version it names (or names a base not held)."""


def apply_delta(base_version: str, base: bytes, message: mesh_pb2.ConfigMessage) -> bytes:
    """The snapshot bytes ``message`` describes, built on ``base`` (the snapshot ``base_version``
    names); DeltaError unless the result hashes to ``message.version``."""
    if message.base_version != base_version or not base_version:
        raise DeltaError(f"delta: base {message.base_version} is not the applied config "
                         f"{base_version or '(none)'}")
    data = join(base, message.delta)
    got = hashlib.sha256(data).hexdigest()[:12]
    if got != message.version:
        raise DeltaError(f"delta: the result hashes to {got}, not {message.version}")
    return data


def join(base: bytes, splices: Iterable[mesh_pb2.Splice]) -> bytes:
    """The pieces joined: new bytes as given, ranges copied from ``base`` (checked)."""
    parts: list[bytes] = []
    size = len(base)
    for s in splices:
        if s.data:
            parts.append(s.data)
        elif s.offset + s.length <= size:
            parts.append(base[s.offset:s.offset + s.length])
        else:
            raise DeltaError(f"delta: range {s.offset}+{s.length} beyond the base ({size} bytes)")
    return b"".join(parts)

"""Delta pushes: a snapshot as ranges of the bytes of one the proxy runs, plus new bytes.

A snapshot's pieces (meshctl.controlplane.jsonpieces: an endpoint, a route...) are looked up
in the base's bytes: a piece found there, or continuing the range before it, is sent as that
range; any other piece is sent as is. Adding an endpoint then costs the endpoint, a route
change the route. One ``Deltas`` per reconcile pass: the replicas of a workload share their
(base, target) pair, so each pair is worked out once.
"""

from __future__ import annotations

from meshctl.api import mesh_pb2
from meshctl.controlplane.snapshots import BuiltSnapshot

# Shorter pieces (brackets, small numbers) are not looked up: as new bytes they cost about
# what a range does, and may match a wrong place in the base.
_MIN_LOOKUP = 16
_RANGE_COST = 8  # about what a range costs on the wire (tag, offset and length varints)


def splices(base: BuiltSnapshot, index: dict[bytes, int],
            target: BuiltSnapshot) -> list[mesh_pb2.Splice] | None:
    """``target`` as pieces of ``base`` (``index``: offset of each of its pieces, from
    ``base_index``); None when that is no smaller than the snapshot itself."""
    data = base.data
    ops: list[list[int] | bytearray] = []  # [offset, length] ranges and new bytes, in order
    end = -1  # where the last range ends in the base (-1: the last op is new bytes)
    cost = 0
    for piece in target.pieces():
        n = len(piece)
        if end >= 0 and data.startswith(piece, end):
            ops[-1][1] += n  # a range: extend it
            end += n
            continue
        offset = index.get(piece) if n >= _MIN_LOOKUP else None
        if offset is not None:
            ops.append([offset, n])
            end = offset + n
            cost += _RANGE_COST
        elif end < 0 and ops:
            ops[-1] += piece  # type: ignore[operator]  # new bytes after new bytes
            cost += n
        else:
            ops.append(bytearray(piece))
            end = -1
            cost += n + _RANGE_COST
        if cost >= len(target.data):
            return None
    return [mesh_pb2.Splice(data=bytes(op)) if isinstance(op, bytearray)
            else mesh_pb2.Splice(offset=op[0], length=op[1]) for op in ops]


def base_index(base: BuiltSnapshot) -> dict[bytes, int]:
    """Where each of ``base``'s pieces starts in its bytes (the first, if repeated)."""
    index: dict[bytes, int] = {}
    offset = 0
    for piece in base.pieces():
        if len(piece) >= _MIN_LOOKUP:
            index.setdefault(piece, offset)
        offset += len(piece)
    return index


class Deltas:
    """The delta of each (base, target) pair asked for, worked out once (one pass's worth)."""

    def __init__(self) -> None:
        self._indexes: dict[str, dict[bytes, int]] = {}  # base version -> base_index
        self._splices: dict[tuple[str, str], list[mesh_pb2.Splice] | None] = {}

    def get(self, base: BuiltSnapshot, target: BuiltSnapshot) -> list[mesh_pb2.Splice] | None:
        """The splices giving ``target`` from ``base``; None: send it in full."""
        key = (base.version, target.version)
        if key not in self._splices:
            index = self._indexes.get(base.version)
            if index is None:
                index = self._indexes[base.version] = base_index(base)
            self._splices[key] = splices(base, index, target)
        return self._splices[key]

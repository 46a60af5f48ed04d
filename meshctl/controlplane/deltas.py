"""Delta pushes: a snapshot as ranges of the bytes of one the proxy runs, plus new bytes.

A snapshot's pieces (meshctl.controlplane.jsonpieces: an endpoint, a route...) are looked up
in the base's bytes: a piece found there, or continuing the range before it, is sent as that
range; any other piece is sent as is. Adding an endpoint then costs the endpoint, a route
change the route. One ``Deltas`` per reconcile pass: the shared part of a namespace's
snapshots is the same tuple of pieces for all its workloads, so each (base, new) pair of
shared parts is compared once, and each workload adds only its own piece.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from meshctl.api import mesh_pb2
from meshctl.controlplane.snapshots import BuiltSnapshot

# Shorter pieces (brackets, small numbers) are not looked up: as new bytes they cost about
# what a range does, and may match a wrong place in the base.
_MIN_LOOKUP = 16
_RANGE_COST = 8  # about what a range costs on the wire (tag, offset and length varints)


@dataclass(slots=True)
class _Ops:
    """Ranges of a base ([offset, length]) and new bytes, in order, as they are worked out."""

    items: list[list[int] | bytearray] = field(default_factory=list)
    end: int = -1  # where the last range ends in the base (-1: the last item is new bytes)
    cost: int = 0  # about what they take on the wire

    def add(self, data: bytes, pieces: Iterable[bytes], index: dict[bytes, int]) -> None:
        """Each of ``pieces`` as a range of ``data`` (the base) or as new bytes."""
        items, end, cost = self.items, self.end, self.cost  # locals: this loop is the cost
        for piece in pieces:
            n = len(piece)
            if end >= 0 and data.startswith(piece, end):
                items[-1][1] += n  # continues the range: extend it
                end += n
                continue
            offset = index.get(piece) if n >= _MIN_LOOKUP else None
            if offset is not None:
                items.append([offset, n])
                end = offset + n
                cost += _RANGE_COST
            elif end < 0 and items:
                items[-1] += piece  # type: ignore[operator]  # new bytes after new bytes
                cost += n
            else:
                items.append(bytearray(piece))
                end = -1
                cost += n + _RANGE_COST
        self.end, self.cost = end, cost

    def copy(self) -> _Ops:
        return _Ops([list(i) if isinstance(i, list) else bytearray(i) for i in self.items],
                    self.end, self.cost)

    def splices(self) -> list[mesh_pb2.Splice]:
        return [mesh_pb2.Splice(data=bytes(i)) if isinstance(i, bytearray)
                else mesh_pb2.Splice(offset=i[0], length=i[1]) for i in self.items]


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
        # (id of the base's shared pieces, id of the target's) -> both (kept alive, so the
        # ids stay theirs) and the ops for the target's shared pieces
        self._shared: dict[tuple[int, int], tuple[object, object, _Ops]] = {}
        self._splices: dict[tuple[str, str], list[mesh_pb2.Splice] | None] = {}

    def get(self, base: BuiltSnapshot, target: BuiltSnapshot) -> list[mesh_pb2.Splice] | None:
        """The splices giving ``target`` from ``base``; None: send it in full."""
        key = (base.version, target.version)
        if key not in self._splices:
            self._splices[key] = self._work_out(base, target)
        return self._splices[key]

    def _work_out(self, base: BuiltSnapshot, target: BuiltSnapshot
                  ) -> list[mesh_pb2.Splice] | None:
        index = self._indexes.get(base.version)
        if index is None:
            index = self._indexes[base.version] = base_index(base)
        if target.shared:
            pair = (id(base.shared), id(target.shared))
            known = self._shared.get(pair)
            if known is None or known[0] is not base.shared or known[1] is not target.shared:
                ops = _Ops()
                ops.add(base.data, target.shared, index)
                known = self._shared[pair] = (base.shared, target.shared, ops)
            ops = known[2].copy()
            own: tuple[bytes, ...] = (target.own,)
        else:
            ops, own = _Ops(), tuple(target.pieces())
        ops.add(base.data, own, index)
        return None if ops.cost >= len(target.data) else ops.splices()

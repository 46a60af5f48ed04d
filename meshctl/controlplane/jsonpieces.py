"""JSON as the snapshot builder writes it (sorted keys, no spaces), cut into reusable pieces."""

from __future__ import annotations

import json
from typing import Any

# One encoder for every call: json.dumps with options builds a new one each time.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))
_KEY = json.JSONEncoder()  # a key: what json.dumps(key) gives


def dumps(value: Any) -> str:
    """The snapshot's JSON form of ``value``: sorted keys, no spaces."""
    return _ENCODER.encode(value)


class Pieces:
    """Writes JSON whose concatenated pieces are byte for byte ``dumps`` of the same values.

    Containers down to a depth are opened up and each value below them is one piece, with
    the brackets and separators before it: an endpoint, a route, a subset. A delta
    (meshctl.controlplane.deltas) then finds most of a new snapshot's pieces in the old one.
    """

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._pending: list[str] = []  # brackets, separators and keys not yet in a piece

    def raw(self, text: str) -> None:
        self._pending.append(text)

    def value(self, value: Any, depth: int) -> None:
        """``value``, opened up ``depth`` levels deep (0: one piece)."""
        if depth > 0 and isinstance(value, dict) and value and all(
                isinstance(k, str) for k in value):
            self.raw("{")
            for i, key in enumerate(sorted(value)):
                self.raw(("," if i else "") + _KEY.encode(key) + ":")
                self.value(value[key], depth - 1)
            self.raw("}")
        elif depth == 1 and isinstance(value, list) and value:
            # The common case (endpoints, rules): each item one piece, without the recursion.
            encode = _ENCODER.encode
            self.raw("[" + encode(value[0]))
            self._flush()
            self._out.extend(("," + encode(item)).encode() for item in value[1:])
            self.raw("]")
        elif depth > 0 and isinstance(value, list) and value:
            self.raw("[")
            for i, item in enumerate(value):
                if i:
                    self.raw(",")
                self.value(item, depth - 1)
            self.raw("]")
        else:
            self._pending.append(dumps(value))
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._out.append("".join(self._pending).encode())
            self._pending.clear()

    def finish(self) -> tuple[bytes, ...]:
        """Every piece written (what is pending becomes the last one)."""
        self._flush()
        return tuple(self._out)

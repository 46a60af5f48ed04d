"""h2's frame buffer, with DATA and HEADERS frames built in one step, not hyperframe's ~12 calls."""

from __future__ import annotations

import struct
from typing import NoReturn

from h2.exceptions import ProtocolError
from h2.frame_buffer import FrameBuffer
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.flags import Flags
from hyperframe.frame import DataFrame, Frame, HeadersFrame

_HEAD = struct.Struct(">HBBBL")  # hyperframe's frame header: length (24 bits), type, flags, id
_PADDED_OR_PRIORITY = 0x08 | 0x20
_KINDS: dict[int, type[DataFrame] | type[HeadersFrame]] = {0x0: DataFrame, 0x1: HeadersFrame}
# The names of the flags a flag byte sets, by frame type (bits not defined are ignored, as
# hyperframe does), and the names each type defines (hyperframe's Flags._valid_flags, only read).
_NAMES = {(kind, byte): frozenset(name for name, bit in cls.defined_flags if byte & bit)
          for kind, cls in _KINDS.items() for byte in range(256)}
_VALID = {kind: {flag.name for flag in cls.defined_flags} for kind, cls in _KINDS.items()}


class FastFrameBuffer(FrameBuffer):
    """h2's `FrameBuffer`: a DATA or HEADERS frame on a stream, without padding or priority
    (what peers send), is built here with the attributes hyperframe's parsing gives it (its
    `__init__` chain through the padding and priority mixins, `Flags`, `parse_flags`,
    `parse_body`, each a call); any other frame, or one inside a header block, is h2's."""

    def __next__(self) -> Frame:
        data = self._data
        if len(data) < 9:
            raise StopIteration
        hi, lo, kind, flags, stream_id = _HEAD.unpack_from(data)
        length = (hi << 8) + lo
        if length > self.max_frame_size and len(data) < length + 9:
            self._refuse_at_header(data, length)
        if self._headers_buffer:
            return super().__next__()
        stream_id &= 0x7FFFFFFF
        if kind > 0x1 or flags & _PADDED_OR_PRIORITY or not stream_id:
            return super().__next__()  # (so is hyperframe's error for stream 0)
        if len(data) < length + 9:
            raise StopIteration
        self._validate_frame_length(length)  # (h2's order: once the whole frame is in)
        body = bytes(data[9:9 + length])
        del data[:9 + length]
        cls = _KINDS[kind]
        frame = cls.__new__(cls)
        frame.stream_id = stream_id
        frame.flags = names = Flags.__new__(Flags)
        names._valid_flags = _VALID[kind]
        names._flags = set(_NAMES[kind, flags])
        frame.body_len = length
        frame.pad_length = 0
        frame.data = body
        if kind:  # HEADERS: the priority mixin's defaults
            frame.depends_on = 0  # type: ignore[union-attr]
            frame.stream_weight = 0  # type: ignore[union-attr]
            frame.exclusive = False  # type: ignore[union-attr]
        out = self._update_header_buffer(frame)  # (a block going on in CONTINUATION: held)
        return out if out is not None else self.__next__()

    def _refuse_at_header(self, data: bytearray, length: int) -> NoReturn:
        """A frame announced over SETTINGS_MAX_FRAME_SIZE is refused at its header, as nghttp2
        does, not held until all of it is in as h2 does (up to 16 MiB a connection, from any
        peer); a header h2 refuses for another reason still gets h2's error."""
        try:
            Frame.parse_frame_header(memoryview(data[:9]))
        except (InvalidDataError, InvalidFrameError) as err:
            raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
        self._validate_frame_length(length)
        raise AssertionError("unreachable: the length is over the limit")

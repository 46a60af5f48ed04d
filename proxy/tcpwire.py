"""The `ami-tcp` wire between two sidecars: an app's byte stream in frames, over mTLS (or, with
mTLS off, in plaintext after a preamble).

TLS cannot half-close (a close_notify ends both directions in uvloop and CPython alike), yet TCP
apps rely on it (a client sends its request and shuts down its write side, then reads the
answer). So between sidecars the bytes travel in frames: a 4-byte big-endian length, then that
many bytes; a frame of length 0 is the sender's FIN. The first frame each way says who and
whether: the caller's is its version label (its service and namespace are its certificate's),
the answer is `ok` or the reason word that refused the connection (`not_authorized`,
`upstream_connect_failure`, ...), after which the server closes. The ALPN id is `ami-tcp`.

Without mTLS (a `DISABLE` destination, or a caller without a certificate under `PERMISSIVE`) the
same frames go in plaintext, opened by PREAMBLE: its NUL first byte is no TLS record (0x16) and no
HTTP method, so the inbound listener's HTTP parser stops at once and the listener recognises
it, as it does HTTP/2's prior-knowledge preface.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

ALPN_TCP = "ami-tcp"
PREAMBLE = b"\x00ami-tcp/1\r\n"  # a plaintext `ami-tcp` connection's first bytes
HEADER = struct.Struct(">I")
FIN = HEADER.pack(0)
OK = b"ok"
MAX_FIRST = 256  # bytes of the first frame (a version label, a reason word)


class WireError(ValueError):
    """The peer broke the framing (a first frame over MAX_FIRST, or an empty one)."""


def first_frame(payload: bytes) -> bytes:
    """The hello or answer frame."""
    return HEADER.pack(len(payload)) + payload


class FrameReader:
    """Turns the framed stream back into the app's bytes, as they arrive (nothing is held but
    a split header and the first frame): ``on_first(payload)`` once, then ``on_data(chunk)``
    per piece of payload, ``on_fin()`` at the sender's FIN."""

    __slots__ = ("_fin", "_first", "_head", "_left", "on_data", "on_fin", "on_first")

    def __init__(self, on_first: Callable[[bytes], None], on_data: Callable[[bytes], None],
                 on_fin: Callable[[], None]) -> None:
        self.on_first = on_first
        self.on_data = on_data
        self.on_fin = on_fin
        self._head = b""  # a header split across reads
        self._left = 0  # payload bytes of the current frame still to come
        self._first: bytearray | None = bytearray()  # None once the first frame was read
        self._fin = False

    def feed(self, data: bytes | memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end:
            left = self._left
            if left:
                take = min(left, end - pos)
                chunk = bytes(data[pos:pos + take])
                pos += take
                self._left = left - take
                first = self._first
                if first is None:
                    self.on_data(chunk)
                    continue
                first += chunk
                if not self._left:
                    self._first = None
                    self.on_first(bytes(first))
                continue
            need = 4 - len(self._head)
            head = self._head + bytes(data[pos:pos + need])
            pos += len(head) - len(self._head)
            if len(head) < 4:
                self._head = head
                return
            self._head = b""
            (length,) = HEADER.unpack(head)
            if self._first is not None and not 0 < length <= MAX_FIRST:
                raise WireError(f"first frame of {length} bytes")
            if self._fin:
                raise WireError("a frame after the FIN")
            if length == 0:
                self._fin = True
                self.on_fin()
            self._left = length

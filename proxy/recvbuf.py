"""The one buffer that TLS connections of the proxy receive into (BufferedProtocol).

Why: given a plain Protocol, uvloop's TLS layer decrypts every read into a fresh 256 KiB bytes
object (an mmap, an mremap and a munmap per request on an mTLS hop); given a buffer, it decrypts
into that. Plain TCP connections keep ``data_received``: there uvloop already reads into a
buffer of its own, and the two extra Python calls per read of the buffered path cost more.
Why one buffer for all connections: the event loop runs one read at a time and each read is parsed
before the callback returns (httptools hands callbacks their own copies), so nothing refers to
the buffer afterwards; code that keeps raw bytes (tunnels, an upgrade's leftovers) copies them.
"""

from __future__ import annotations

import asyncio

SIZE = 64 * 1024
BUFFER = memoryview(bytearray(SIZE))


class BufferedReads(asyncio.BufferedProtocol):
    """Mixin for the TLS protocols: receive into BUFFER, hand each read to data_received."""

    __slots__ = ()

    def get_buffer(self, sizehint: int) -> memoryview:
        return BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(BUFFER[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        raise NotImplementedError  # provided by the protocol class listed before this mixin

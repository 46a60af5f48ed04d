"""Closing a TCP session's socket without letting a reader that stopped reading hold it open.

A closed transport still writes what it holds, and reads nothing more. So a peer that stopped
reading (or an app blocked writing to us, which we stopped reading when the other side backed
up) would keep the socket, and its file descriptor, open forever, outside every connection
limit. Each closed socket still holding bytes is checked every FLUSH_GRACE seconds: while its
reader takes some, it keeps its time; one that took none since the last check is reset.
"""

from __future__ import annotations

import asyncio

FLUSH_GRACE = 5.0  # seconds a closed socket may go without its reader taking a byte


def close_flushing(transport: asyncio.BaseTransport) -> None:
    """Close ``transport``, leaving its reader FLUSH_GRACE seconds per progress to take what
    is still buffered."""
    transport.close()
    _watch(transport, 0)


def _watch(transport: asyncio.BaseTransport, before: int) -> None:
    left = transport.get_write_buffer_size()  # type: ignore[attr-defined]
    if not left:
        return  # written out (or closed): the transport ends on its own
    if before and left >= before:
        transport.abort()  # type: ignore[attr-defined]  # no byte taken for a whole grace
        return
    asyncio.get_running_loop().call_later(FLUSH_GRACE, _watch, transport, left)

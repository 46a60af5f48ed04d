"""How many bytes of our output a TCP peer has taken, as its kernel acknowledged them."""

from __future__ import annotations

import asyncio
import socket
import struct

# struct tcp_info (linux/tcp.h): tcpi_bytes_acked, a u64 since Linux 4.1, sits at offset 120.
_BYTES_ACKED = 120
_INFO_SIZE = 128
_TCP_INFO = getattr(socket, "TCP_INFO", None)


def bytes_taken(transport: asyncio.BaseTransport) -> int | None:
    """Bytes of the transport's output the peer acknowledged (a peer that does not read stops
    acknowledging once its receive buffer is full); None where the kernel does not say."""
    sock = transport.get_extra_info("socket")
    if sock is None or _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _INFO_SIZE)
    except OSError:
        return None
    if len(info) < _INFO_SIZE:
        return None
    taken: int = struct.unpack_from("=Q", info, _BYTES_ACKED)[0]
    return taken

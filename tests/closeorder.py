"""The order in which a peer closed several sockets: proves "A's deadline came first" untimed."""

from __future__ import annotations

import selectors
import socket
import time


def close_order(socks: dict[str, socket.socket], deadline: float) -> list[tuple[str, float]]:
    """(name, time.monotonic() seen) of `socks` in the order the peer closed (or reset) them,
    draining any data before the close.

    epoll reports sockets in the order they became ready, so even a client that fell behind
    (a loaded machine) sees the closes in the order the peer made them: the test compares the
    order of two deadlines the peer keeps, never the time anything took."""
    order: list[tuple[str, float]] = []
    with selectors.DefaultSelector() as sel:
        for name, sock in socks.items():
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, name)
        end = time.monotonic() + deadline
        while len(order) < len(socks):
            left = end - time.monotonic()
            assert left > 0, f"only {order} closed before the deadline"
            for key, _ in sel.select(left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    if sock.recv(65536):
                        continue  # data before the close (a ServerHello): not the close yet
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    pass
                order.append((key.data, time.monotonic()))
                sel.unregister(sock)
    return order

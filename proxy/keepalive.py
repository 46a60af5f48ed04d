"""TCP keepalive probes on an upstream connection (a DestinationPolicy's tcpKeepalive)."""

from __future__ import annotations

import asyncio
import logging
import socket

from meshctl.api.policy import TcpKeepalive

log = logging.getLogger("ami.proxy.pool")

# Linux names; where one is missing (another OS), the system's own value stays.
_OPTIONS = (("time", getattr(socket, "TCP_KEEPIDLE", None)),
            ("interval", getattr(socket, "TCP_KEEPINTVL", None)),
            ("probes", getattr(socket, "TCP_KEEPCNT", None)))


def set_keepalive(transport: asyncio.BaseTransport, settings: TcpKeepalive) -> None:
    """Turn SO_KEEPALIVE on for ``transport``'s socket, with the times and count set (a field
    left out keeps the operating system's: 7200 s idle, 75 s apart, 9 probes on Linux)."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for field, option in _OPTIONS:
            value = getattr(settings, field)
            if value is not None and option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, max(1, int(value)))
    except OSError as exc:  # the connection closed meanwhile: nothing to probe
        log.debug("TCP keepalive not set: %s", exc)

"""One HTTP/2 GET over cleartext (h2c, prior knowledge): the readiness probe of the h2 paths."""

from __future__ import annotations

import socket

import h2.config
import h2.connection
import h2.events
import h2.exceptions


def h2_status(port: int, path: str = "/", authority: str = "backend", timeout: float = 1.0) -> int:
    """Status of one h2c GET to 127.0.0.1:port, or 0 when it fails."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            conn.initiate_connection()
            conn.send_headers(
                1,
                [(":method", "GET"), (":scheme", "http"), (":authority", authority),
                 (":path", path)],
                end_stream=True,
            )
            sock.sendall(conn.data_to_send())
            status = 0
            while True:
                data = sock.recv(65536)
                if not data:
                    return 0
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ResponseReceived):
                        status = int(dict(event.headers).get(b":status", b"0"))
                    elif isinstance(event, h2.events.DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, 1)
                    elif isinstance(event, h2.events.StreamEnded):
                        return status
                    elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                        return 0
                pending = conn.data_to_send()
                if pending:
                    sock.sendall(pending)
    except (OSError, h2.exceptions.ProtocolError, ValueError):
        return 0

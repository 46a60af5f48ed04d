"""A real TCP server for the TCP-service tests: `python -m tests.tcpapp PORT NAME`.

It speaks first (a banner, `hello from NAME\\n`, as SMTP, MySQL or SSH servers do), then echoes
every byte back. At the client's FIN it prints `eof N` on stdout and answers `bye N\\n` (N: bytes
it received), then closes.
The line `shutdown\\n` makes it half-close instead (`closing\\n`, then its FIN) and keep reading:
at the client's FIN it prints `after-shutdown N` (bytes read since) on stdout. `quit\\n` closes
the connection at once.

`start_tcp_app` starts it from a test; `banner`, `read_line` and `read_to_eof` read from it.
"""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.helpers_mesh import MeshProcess


def serve(conn: socket.socket, name: bytes) -> None:
    with conn:
        conn.sendall(b"hello from " + name + b"\n")
        received, after, half_closed, tail = 0, 0, False, b""
        while True:
            data = conn.recv(65536)
            if not data:
                break
            received += len(data)
            if half_closed:
                after += len(data)
                continue
            tail = (tail + data)[-16:]
            if tail.endswith(b"quit\n"):
                return
            if tail.endswith(b"shutdown\n"):
                conn.sendall(b"closing\n")
                conn.shutdown(socket.SHUT_WR)
                half_closed = True
                continue
            conn.sendall(data)
        if half_closed:
            print(f"after-shutdown {after}", flush=True)
        else:
            print(f"eof {received}", flush=True)
            try:
                conn.sendall(b"bye %d\n" % received)
            except OSError:
                pass  # the client's side closed for good (a sidecar's idle timeout)


def main() -> None:
    port, name = int(sys.argv[1]), sys.argv[2].encode()
    server = socket.create_server(("127.0.0.1", port))
    print("listening", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn, name), daemon=True).start()


def start_tcp_app(log_dir: Path, name: str, timeout: float = 10.0) -> MeshProcess:
    """This server, as `NAME`, on a free loopback port (`info["address"]`), once listening."""
    from tests.helpers_mesh import PYTHON, free_port, spawn, wait_for

    port = free_port()
    proc = spawn(f"tcpapp-{name}", [PYTHON, "-m", "tests.tcpapp", str(port), name], log_dir)
    proc.info["address"] = f"127.0.0.1:{port}"
    wait_for(lambda: "listening" in proc.output(), timeout, f"tcp app {name}")
    return proc


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def banner(sock: socket.socket) -> str:
    """The answering instance's NAME (the server speaks first)."""
    line = read_line(sock)
    assert line.startswith(b"hello from "), line
    return line[len(b"hello from "):-1].decode()


def echo_session(sock: socket.socket, name: str = "db-v1") -> None:
    """A whole exchange with the app ``name``: its banner, an echo, a half-close and its
    answer (the bytes it received)."""
    assert banner(sock) == name
    sock.sendall(b"ping\n")
    assert read_line(sock) == b"ping\n"
    sock.shutdown(socket.SHUT_WR)
    assert read_to_eof(sock) == b"bye 5\n"


if __name__ == "__main__":
    main()

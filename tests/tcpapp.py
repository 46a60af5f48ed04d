"""A real TCP server for the TCP-service tests: `python -m tests.tcpapp PORT NAME`.

It speaks first (a banner, `hello from NAME\\n`, as SMTP, MySQL or SSH servers do), then echoes
every byte back. At the client's FIN it prints `eof N` on stdout and answers `bye N\\n` (N: bytes
it received), then closes.
The line `shutdown\\n` makes it half-close instead (`closing\\n`, then its FIN) and keep reading:
at the client's FIN it prints `after-shutdown N` (bytes read since) on stdout. `quit\\n` closes
the connection at once.
"""

from __future__ import annotations

import socket
import sys
import threading


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


if __name__ == "__main__":
    main()

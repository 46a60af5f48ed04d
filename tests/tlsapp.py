"""A TLS server for the gateway passthrough tests: `python -m tests.tlsapp PORT CERT KEY`.

It terminates TLS itself, with its own certificate (the gateway only relays the bytes), then
says which server name the client's hello carried (`sni NAME\\n`, `sni -` for none) and echoes
every byte back; at the client's FIN it answers `bye N\\n` (N: bytes received) and closes.
Each handshake prints `handshake NAME` on stdout, each failed one `failed REASON`.

`start_tls_app` starts it from a test.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.helpers_mesh import MeshProcess


def serve(conn: socket.socket, ctx: ssl.SSLContext, names: dict[int, str]) -> None:
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
    except (OSError, ssl.SSLError) as exc:
        print(f"failed {exc}", flush=True)
        conn.close()
        return
    with tls:
        name = names.pop(id(tls), "-")
        print(f"handshake {name}", flush=True)
        tls.sendall(f"sni {name}\n".encode())
        received = 0
        while data := tls.recv(65536):
            received += len(data)
            tls.sendall(data)
        tls.sendall(b"bye %d\n" % received)


def main() -> None:
    port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    names: dict[int, str] = {}

    def remember(sock: ssl.SSLSocket | ssl.SSLObject, name: str | None,
                 _ctx: ssl.SSLContext) -> None:
        names[id(sock)] = name or "-"

    ctx.sni_callback = remember
    server = socket.create_server(("127.0.0.1", port))
    print("listening", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn, ctx, names), daemon=True).start()


def start_tls_app(log_dir: Path, name: str, cert: Path, key: Path,
                  timeout: float = 10.0) -> MeshProcess:
    """This server on a free loopback port (`info["address"]`), once listening."""
    from tests.helpers_mesh import PYTHON, free_port, spawn, wait_for

    port = free_port()
    proc = spawn(f"tlsapp-{name}", [PYTHON, "-m", "tests.tlsapp", str(port), str(cert),
                                    str(key)], log_dir)
    proc.info["address"] = f"127.0.0.1:{port}"
    wait_for(lambda: "listening" in proc.output(), timeout, f"tls app {name}")
    return proc


if __name__ == "__main__":
    main()

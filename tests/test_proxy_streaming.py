"""1 GiB through the proxy each way, with the proxy's peak RSS under 100 MB (bodies stream)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxyharness import ProxyProcess

SIZE = 1 << 30  # 1 GiB
BLOCK = b"\xa5" * (1 << 20)
RSS_LIMIT_KB = 100 * 1024


class BlockingBackend:
    """A one-thread-per-connection socket server: `download` sends SIZE bytes, others count."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.received = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(65536)
            head, _, rest = head.partition(b"\r\n\r\n")
            if head.startswith(b"GET /download"):
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
                for _ in range(SIZE // len(BLOCK)):
                    conn.sendall(BLOCK)
                return
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            got, buf = len(rest), bytearray(1 << 20)
            while got < length:
                n = conn.recv_into(buf)
                if not n:
                    return
                got += n
            self.received = got
            body = b"%d" % got
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def close(self) -> None:
        self.sock.close()


def _download(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"GET /download HTTP/1.1\r\nHost: bulk\r\n\r\n")
        buf = bytearray(1 << 20)
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        head, _, rest = head.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        got = len(rest)
        while got < SIZE:
            n = s.recv_into(buf)
            assert n, f"connection closed after {got} bytes"
            got += n
        return got


def _upload(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: bulk\r\nContent-Length: %d\r\n\r\n" % SIZE)
        for _ in range(SIZE // len(BLOCK)):
            s.sendall(BLOCK)
        resp = b""
        while b"\r\n\r\n" not in resp or not resp.endswith(b"%d" % SIZE):
            chunk = s.recv(4096)
            if not chunk:
                break
            resp += chunk
        return resp


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ProxyProcess,
                                                                     BlockingBackend]]:
    backend = BlockingBackend()
    proxy = ProxyProcess(Path(tmp_path_factory.mktemp("stream")), {"bulk": [backend.port]})
    proxy.start()
    yield proxy, backend
    proxy.stop()
    backend.close()


@pytest.mark.slow
async def test_1gib_download_streams(bulk: tuple[ProxyProcess, BlockingBackend]) -> None:
    """A 1 GiB response body passes through whole while the proxy's peak RSS stays < 100 MB."""
    proxy, _ = bulk
    got = await asyncio.wait_for(asyncio.to_thread(_download, proxy.outbound), 100)
    assert got == SIZE
    assert proxy.vm_hwm_kb() < RSS_LIMIT_KB, proxy.vm_hwm_kb()


@pytest.mark.slow
async def test_1gib_upload_streams(bulk: tuple[ProxyProcess, BlockingBackend]) -> None:
    """A 1 GiB request body reaches the backend whole while the proxy's peak RSS stays < 100 MB."""
    proxy, backend = bulk
    resp = await asyncio.wait_for(asyncio.to_thread(_upload, proxy.outbound), 100)
    assert resp.startswith(b"HTTP/1.1 200") and resp.endswith(b"%d" % SIZE), resp[:200]
    assert backend.received == SIZE
    assert proxy.vm_hwm_kb() < RSS_LIMIT_KB, proxy.vm_hwm_kb()

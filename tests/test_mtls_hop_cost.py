"""What the inbound sidecar saves per mTLS request, checked for what it must not lose.

A STRICT inbound sidecar (a real process) in front of a raw backend that answers each request
with one write. Raw TLS clients with mesh identities play the calling sidecars: they count the
TLS records of a response, and vary the `x-ami-peer` version on one connection and the
identity across connections, which the cached metrics series of mTLS peers must follow.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from proxy.identity import WorkloadIdentity
from tests.proxyharness import Backends, ProxyProcess, RawBackend, free_port, metric_value
from tests.test_mtls_static import client_ctx, mesh_ca, mint, start_proxy

DEADLINE = 10.0
BODY = b"b" * 1024
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n"
            % len(BODY) + BODY)


@dataclass
class Hop:
    """The inbound sidecar, its port, and callers' identities."""

    inbound: ProxyProcess
    port: int
    bundle: bytes
    productpage: WorkloadIdentity
    ratings: WorkloadIdentity


async def _answer_each_in_one_write(backend: RawBackend, reader: asyncio.StreamReader,
                                    writer: asyncio.StreamWriter) -> None:
    while True:
        await reader.readuntil(b"\r\n\r\n")  # GETs only: no body to read
        writer.write(RESPONSE)
        await writer.drain()


@pytest.fixture(scope="module")
def hop(tmp_path_factory: pytest.TempPathFactory, backends: Backends) -> Iterator[Hop]:
    tmp = tmp_path_factory.mktemp("mtls-hop")
    ca = mesh_ca(tmp / "ca")
    proc: ProxyProcess | None = None
    try:
        app = backends.raw(_answer_each_in_one_write)
        port = free_port()
        proc = start_proxy(tmp / "inbound", mint(ca, "reviews"), {
            "node": {"service": "reviews", "labels": {"version": "v1"}},
            "app": f"127.0.0.1:{app.port}", "mesh": {"mtls": "STRICT"}}, inbound=port)
        yield Hop(proc, port, ca.trust_bundle(), mint(ca, "productpage"), mint(ca, "ratings"))
    finally:
        if proc is not None:
            proc.stop()


class RawTls:
    """A blocking TLS client over a MemoryBIO that keeps the raw bytes it received."""

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.incoming, self.outgoing)
        self.raw = b""  # everything received since the last `request`
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._receive()
        self._flush()

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data:
            self.sock.sendall(data)

    def _receive(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by the sidecar")
        self.raw += data
        self.incoming.write(data)

    def request(self, raw: bytes) -> bytes:
        """Send one request, return its whole response (this test's are Content-Length)."""
        self.raw = b""
        self.tls.write(raw)
        self._flush()
        plain = b""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            self._receive()
            try:
                while True:
                    plain += self.tls.read(65536)
            except ssl.SSLWantReadError:
                pass
            head, sep, body = plain.partition(b"\r\n\r\n")
            if sep:
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                if len(body) >= length:
                    return plain
        raise TimeoutError("no whole response within the deadline")

    def records(self) -> list[int]:
        """The content type of each TLS record received since the last `request`."""
        types, i = [], 0
        while i + 5 <= len(self.raw):
            types.append(self.raw[i])
            i += 5 + int.from_bytes(self.raw[i + 3:i + 5], "big")
        assert i == len(self.raw), "a partial record at the end"
        return types

    def close(self) -> None:
        self.sock.close()


def _get(path: str, peer: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: reviews\r\nx-ami-peer: {peer}\r\n\r\n").encode()


def test_a_response_read_at_once_goes_back_as_one_tls_record(hop: Hop) -> None:
    """The backend's response arrives in one read; the sidecar writes its head and body as
    one TLS record (not one per part: the caller's sidecar would decrypt each)."""
    client = RawTls(hop.port, client_ctx(hop.productpage, hop.bundle))
    try:
        for _ in range(3):  # the first request of a connection, and the kept-alive ones
            response = client.request(_get("/one-record", "productpage;v1"))
            assert response.startswith(b"HTTP/1.1 200 ") and response.endswith(BODY)
            assert client.records() == [23], client.records()  # one application_data record
    finally:
        client.close()


async def test_metrics_follow_each_requests_peer_and_version(hop: Hop) -> None:
    """The series of an mTLS peer's requests is cached by (backend, status, ..., caller's
    service and version): a version that changes between requests of one connection, and
    another identity on another connection, each count in their own series."""
    def ask(identity: WorkloadIdentity, peers: list[str]) -> None:
        client = RawTls(hop.port, client_ctx(identity, hop.bundle))
        try:
            for peer in peers:
                assert client.request(_get("/series", peer)).startswith(b"HTTP/1.1 200 ")
        finally:
            client.close()

    def count(service: str, version: str, text: str) -> float:
        return metric_value(text, "ami_requests_total", reporter="destination",
                            source_workload=service, source_version=version,
                            connection_security_policy="mutual_tls")

    before = await hop.inbound.metrics()
    await asyncio.to_thread(ask, hop.ratings, ["ratings;v1", "ratings;v2", "ratings;v1"])
    await asyncio.to_thread(ask, hop.productpage, ["productpage;v2"])
    after = await hop.inbound.metrics()
    assert [count(s, v, after) - count(s, v, before) for s, v in
            (("ratings", "v1"), ("ratings", "v2"), ("productpage", "v2"), ("productpage", "v1"))
            ] == [2, 1, 1, 0]

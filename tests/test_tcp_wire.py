"""The `ami-tcp` framing (proxy.tcpwire) as properties: whatever the payloads and however the
stream is split into reads, the reader gives back the hello, the same bytes and one FIN; what a
session writes (proxy.tcprelay) reads back the same; a broken stream is a WireError."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.metrics import RequestStats
from proxy.tcprelay import TcpSession
from proxy.tcpwire import FIN, HEADER, MAX_FIRST, FrameReader, WireError, first_frame

hellos = st.binary(min_size=1, max_size=MAX_FIRST)
# an app's reads: never empty (asyncio delivers no empty read; an empty frame is the FIN)
payloads = st.lists(st.binary(min_size=1, max_size=300), max_size=12)


class Collected:
    """What a FrameReader gave back, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.reader = FrameReader(lambda p: self.events.append(("first", p)),
                                  lambda c: self.events.append(("data", c)),
                                  lambda: self.events.append(("fin", b"")))

    def summary(self) -> tuple[list[tuple[str, bytes]], bytes]:
        """The non-data events in order (data as one placeholder per run), and all data."""
        shape: list[tuple[str, bytes]] = []
        for kind, _ in self.events:
            if kind != "data" or not shape or shape[-1][0] != "data":
                shape.append((kind, b""))
        data = b"".join(chunk for kind, chunk in self.events if kind == "data")
        return shape, data


def frame_stream(hello: bytes, chunks: list[bytes]) -> bytes:
    return first_frame(hello) + b"".join(HEADER.pack(len(c)) + c for c in chunks) + FIN


def feed_split(reader: FrameReader, stream: bytes, cuts: list[int]) -> None:
    """Feed ``stream`` in pieces ending at ``cuts`` (memoryviews, as the TLS path reads)."""
    view = memoryview(stream)
    start = 0
    for cut in [*sorted({c % (len(stream) + 1) for c in cuts}), len(stream)]:
        if cut > start:
            reader.feed(view[start:cut])
            start = cut


def expected_shape(chunks: list[bytes]) -> list[tuple[str, bytes]]:
    return [("first", b"")] + ([("data", b"")] if chunks else []) + [("fin", b"")]


@given(hellos, payloads, st.lists(st.integers(min_value=0, max_value=10_000), max_size=40))
def test_any_split_reads_back_the_hello_the_bytes_and_one_fin(
        hello: bytes, chunks: list[bytes], cuts: list[int]) -> None:
    """Framed payloads fed in any split give exactly the hello, then the same bytes (no
    empty piece), then one FIN."""
    got = Collected()
    feed_split(got.reader, frame_stream(hello, chunks), cuts)
    assert got.events[0] == ("first", hello)
    assert all(chunk for kind, chunk in got.events if kind == "data")
    shape, data = got.summary()
    assert shape == expected_shape(chunks)
    assert data == b"".join(chunks)


@given(hellos, payloads)
def test_one_byte_reads_read_back_the_same(hello: bytes, chunks: list[bytes]) -> None:
    """The worst split, a byte per read (each header in four pieces), loses nothing."""
    stream = frame_stream(hello, chunks)
    got = Collected()
    for i in range(len(stream)):
        got.reader.feed(stream[i:i + 1])
    assert got.events[0] == ("first", hello)
    shape, data = got.summary()
    assert shape == expected_shape(chunks)
    assert data == b"".join(chunks)


class FakeTransport:
    """What a session writes to the peer's connection, as bytes."""

    def __init__(self) -> None:
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.out += part

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass


@settings(max_examples=60)
@given(hellos, payloads, st.lists(st.integers(min_value=0, max_value=5_000), max_size=20))
def test_what_a_session_writes_reads_back(hello: bytes, chunks: list[bytes],
                                          cuts: list[int]) -> None:
    """The writer side: a caller's session framing its app's reads and its FIN (after the
    hello it sends) is read back, in any split, as the same hello, bytes and FIN."""
    loop = asyncio.new_event_loop()
    try:
        session = TcpSession(RequestStats(), True, "tcp_upstream", loop)
        mesh = FakeTransport()
        session.mesh = mesh  # type: ignore[assignment]
        mesh.write(first_frame(hello))
        for chunk in chunks:
            session.from_app(chunk)
        session.app_eof()
    finally:
        loop.close()
    got = Collected()
    feed_split(got.reader, bytes(mesh.out), cuts)
    assert got.events[0] == ("first", hello)
    shape, data = got.summary()
    assert shape == expected_shape(chunks)
    assert data == b"".join(chunks)


@pytest.mark.parametrize(("stream", "error"), [
    (HEADER.pack(MAX_FIRST + 1), "first frame of 257 bytes"),
    (FIN, "first frame of 0 bytes"),
    (HEADER.pack(0xFFFFFFFF), "first frame of 4294967295 bytes"),
    (b"\x16\x03\x01\x02\x00", "first frame of"),  # a TLS ClientHello after the preamble
    (b"GET / HTTP/1.1\r\n", "first frame of"),
    (first_frame(b"v1") + FIN + HEADER.pack(1) + b"x", "a frame after the FIN"),
    (first_frame(b"v1") + FIN + FIN, "a frame after the FIN"),
])
def test_a_broken_stream_is_a_wire_error(stream: bytes, error: str) -> None:
    """An oversized or empty first frame, non-`ami-tcp` bytes, and anything after the FIN are
    refused as soon as their header is read, before any payload is held."""
    got = Collected()
    with pytest.raises(WireError, match=error):
        got.reader.feed(stream)
    assert [kind for kind, _ in got.events] in ([], ["first", "fin"])


def test_a_huge_frame_is_passed_on_as_it_arrives() -> None:
    """A data frame announcing 4 GiB holds nothing: each read's bytes go on at once."""
    got = Collected()
    got.reader.feed(first_frame(b"v1") + HEADER.pack(0xFFFFFFFF))
    for _ in range(3):
        got.reader.feed(b"abc")
    assert got.events == [("first", b"v1"), ("data", b"abc"), ("data", b"abc"),
                          ("data", b"abc")]

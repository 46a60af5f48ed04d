"""The gateway's ClientHello reader (proxy.clienthello) and passthrough table (proxy.sniroutes):
real ClientHellos from Python's ssl cut into any reads and re-cut into any TLS records, every
malformed length refused with HelloError, and the most specific server name pattern winning."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.clienthello import MAX_BYTES, MAX_HELLO, ClientHello, HelloError, HelloReader
from proxy.sniroutes import SniRoute, SniRoutes, build


def client_hello(server_name: str | None, *, alpn: tuple[str, ...] = ()) -> bytes:
    """The first flight of a real TLS client (OpenSSL through Python's ssl): one record."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def message_of(record: bytes) -> bytes:
    """The handshake message a single-record ClientHello carries."""
    assert record[0] == 0x16 and len(record) == 5 + struct.unpack(">H", record[3:5])[0]
    return record[5:]


def in_records(message: bytes, sizes: list[int]) -> bytes:
    """``message`` carried in handshake records of the given payload sizes (the last takes
    the rest), as a client may fragment it."""
    out, pos = bytearray(), 0
    for size in [*sizes, len(message)]:
        chunk = message[pos:pos + max(size, 1)]
        if not chunk:
            break
        out += b"\x16\x03\x01" + struct.pack(">H", len(chunk)) + chunk
        pos += len(chunk)
    return bytes(out)


def read_in_pieces(data: bytes, cuts: list[int]) -> ClientHello | None:
    """Feed ``data`` cut at ``cuts``; the hello when one piece completes it."""
    reader = HelloReader()
    pos = 0
    for cut in sorted({c for c in cuts if 0 < c < len(data)} | {len(data)}):
        hello = reader.feed(data[pos:cut])
        if hello is not None:
            return hello
        assert reader.needed > cut  # it never asks for what it already has
        pos = cut
    return None


def hello_body(extensions: bytes | None) -> bytes:
    """A minimal ClientHello message with these extension bytes (None: no extensions field)."""
    body = b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
    if extensions is not None:
        body += struct.pack(">H", len(extensions)) + extensions
    return b"\x01" + len(body).to_bytes(3, "big") + body


def sni_extension(*names: tuple[int, bytes]) -> bytes:
    entries = b"".join(bytes([kind]) + struct.pack(">H", len(n)) + n for kind, n in names)
    listed = struct.pack(">H", len(entries)) + entries
    return b"\x00\x00" + struct.pack(">H", len(listed)) + listed


def record(message: bytes) -> bytes:
    return b"\x16\x03\x01" + struct.pack(">H", len(message)) + message


@pytest.mark.parametrize(("name", "expected"), [
    ("db.example.com", "db.example.com"),
    ("a.b.apps.example.com", "a.b.apps.example.com"),
    (None, None),
])
def test_a_real_client_hello_gives_its_server_name(name: str | None,
                                                   expected: str | None) -> None:
    data = client_hello(name, alpn=("h2", "http/1.1"))
    assert HelloReader().feed(data) == ClientHello(expected)


def test_the_name_is_read_case_insensitively_and_without_a_final_dot() -> None:
    message = hello_body(sni_extension((0, b"DB.Example.COM.")))
    assert HelloReader().feed(record(message)) == ClientHello("db.example.com")


def test_a_hello_without_extensions_has_no_name() -> None:
    assert HelloReader().feed(record(hello_body(None))) == ClientHello(None)


def test_bytes_after_the_hello_are_left_alone() -> None:
    """What follows the hello in the same read (an early data record) is not parsed."""
    data = client_hello("db.example.com") + b"\x17\x03\x03\x00\x05hello"
    assert HelloReader().feed(data) == ClientHello("db.example.com")


@settings(max_examples=150, deadline=None)
@given(sizes=st.lists(st.integers(1, 600), max_size=12),
       cuts=st.lists(st.integers(1, 4000), max_size=40))
def test_any_records_and_any_reads_give_the_same_name(sizes: list[int], cuts: list[int]) -> None:
    """A ClientHello fragmented into records of any sizes, arriving in reads cut anywhere,
    reads as the whole one does; `needed` always asks for more than it has."""
    data = in_records(message_of(client_hello("db.example.com")), sizes)
    assert read_in_pieces(data, cuts) == ClientHello("db.example.com")


def test_one_byte_records_read_one_byte_at_a_time() -> None:
    data = in_records(message_of(client_hello("x.apps.example.com")), [1] * 4000)
    assert read_in_pieces(data, list(range(1, len(data)))) == ClientHello("x.apps.example.com")


def test_needed_lets_a_waiter_wake_once_per_step() -> None:
    """Feeding exactly what `needed` asks for each time completes the hello in a few steps
    (record header, its payload, the next header...), not one per byte."""
    data = in_records(message_of(client_hello("db.example.com")), [100, 100])
    reader, fed, steps = HelloReader(), 0, 0
    hello = None
    while hello is None:
        want = reader.needed
        hello = reader.feed(data[fed:want])
        fed, steps = want, steps + 1
    assert hello == ClientHello("db.example.com") and steps <= 8


@pytest.mark.parametrize(("data", "why"), [
    (b"\x17\x03\x03\x00\x05hello", "record of type 23"),
    (b"\x16\x02\x00\x00\x05hello", "not TLS"),
    (b"\x16\x03\x01\x00\x00", "record of 0 bytes"),
    (b"\x16\x03\x01\x40\x01", "record of 16385 bytes"),
    (record(b"\x02\x00\x00\x00"), "handshake message 2"),
    (record(b"\x01\x01\x00\x00"), f"ClientHello of 65540 bytes, over {MAX_HELLO}"),
    (record(b"\x01\x00\x00\x04\x03\x03\x00\x00"), "the version and random runs past"),
    (record(hello_body(b"")[:-2] + b"\x00\x05"), "the extensions runs past"),
    (record(hello_body(sni_extension((0, b"a.example"), (0, b"b.example")))),
     "more than one server name"),
    (record(hello_body(sni_extension((1, b"a.example")))), "server name of type 1"),
    (record(hello_body(sni_extension((0, b"db\x00.example")))), "is no host name"),
    (record(hello_body(sni_extension((0, b"a..example")))), "is no host name"),
    (record(hello_body(sni_extension((0, b"caf\xe9.example")))), "is no host name"),
    (record(hello_body(sni_extension((0, b"")))), "is no host name"),
    (record(hello_body(sni_extension((0, b"a.example")) * 2)), "extension 0 twice"),
    (record(hello_body(b"\x00\x0a\x00\x09")), "extension 10 runs past"),
])
def test_malformed_hellos_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(HelloError, match=why):
        HelloReader().feed(data)


def test_a_hello_spread_over_too_many_records_is_refused() -> None:
    """Tiny records make a hello under MAX_HELLO cost up to 6 bytes per byte: capped."""
    message = hello_body(b"\x00\x15" + struct.pack(">H", 8000) + bytes(8000))  # padding
    data = in_records(message, [1] * len(message))
    with pytest.raises(HelloError, match=f"records over {MAX_BYTES} bytes"):
        read_in_pieces(data, [])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_after_a_handshake_byte_never_escapes_as_another_error(tail: bytes) -> None:
    reader = HelloReader()
    try:
        reader.feed(b"\x16" + tail)
    except HelloError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=200), st.integers(0, 400))
def test_a_corrupted_real_hello_is_read_or_refused(junk: bytes, at: int) -> None:
    """Any bytes overwritten anywhere in a real hello: a hello (maybe another name), more to
    wait for, or a HelloError; nothing else."""
    data = bytearray(client_hello("db.example.com"))
    at = min(at, len(data) - 1)
    data[at:at + len(junk)] = junk
    try:
        HelloReader().feed(bytes(data))
    except HelloError:
        pass


def routes(*entries: tuple[str, ...]) -> SniRoutes:
    """A table whose entry i sends its names to `svc<i>`."""
    exact: dict[str, SniRoute] = {}
    suffixes: dict[str, SniRoute] = {}
    any_name = None
    for i, hosts in enumerate(entries):
        route = SniRoute(f"svc{i}", None, "no_route")
        for host in hosts:
            if host == "*":
                any_name = route
            elif host.startswith("*."):
                suffixes[host[2:]] = route
            else:
                exact[host] = route
    return SniRoutes(exact, suffixes, any_name)


@pytest.mark.parametrize(("name", "expected"), [
    ("db.example.com", "svc0"),
    ("x.db.example.com", "svc1"),  # *.db.example.com over *.example.com
    ("a.b.db.example.com", "svc1"),
    ("shop.example.com", "svc2"),
    ("example.com", "svc3"),  # *.example.com needs a label before the suffix: `*`
    ("other.org", "svc3"),
    (None, None),  # no name: nothing to route by
])
def test_the_most_specific_pattern_wins(name: str | None, expected: str | None) -> None:
    table = routes(("db.example.com",), ("*.db.example.com",), ("*.example.com",), ("*",))
    found = table.lookup(name)
    assert (found.destination if found else None) == expected


def test_without_any_pattern_unknown_names_find_nothing() -> None:
    table = routes(("db.example.com", "*.apps.example.com"))
    assert table.lookup("apps.example.com") is None
    assert table.lookup("db.example.com.evil.net") is None
    assert table.lookup("x.apps.example.com") is not None


def test_a_destination_that_is_no_tcp_service_is_refused_with_a_reason() -> None:
    """Built from a snapshot: an HTTP service is `protocol_mismatch`, none `no_route`; no
    entries, no table (connections then pay nothing)."""
    from meshctl.api.kinds import GatewayPassthrough

    table = build((GatewayPassthrough(("web.example.com",), "web"),
                   GatewayPassthrough(("gone.example.com",), "gone")), {}, {"web": object()})
    assert table is not None
    web, gone = table.lookup("web.example.com"), table.lookup("gone.example.com")
    assert web is not None and (web.target, web.refusal) == (None, "protocol_mismatch")
    assert gone is not None and (gone.target, gone.refusal) == (None, "no_route")
    assert build((), {}, {}) is None

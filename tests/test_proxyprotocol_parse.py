"""The PROXY protocol header parser (proxy.proxyprotocol): v1 and v2 headers built from
addresses read back; every prefix of one asks for more; what is no header is refused."""

from __future__ import annotations

import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.proxyprotocol import (
    V1_MAX,
    V2_MAX_PAYLOAD,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    header_end,
    parse,
    v1,
    v2,
)

ipv4 = st.ip_addresses(v=4).map(str)
# written as a socket names its peer (inet_ntop), as the parser writes them
ipv6 = st.ip_addresses(v=6).map(lambda a: socket.inet_ntop(socket.AF_INET6, a.packed))
ports = st.integers(0, 65535)
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5).map(
    lambda items: b"".join(bytes((kind,)) + len(v).to_bytes(2, "big") + v for kind, v in items))
# what a client sends after the header: never part of it
after = st.binary(max_size=64)


def whole(data: bytes) -> ProxyHeader:
    end = header_end(data)
    assert end is not None
    return parse(data[:end])


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, after)
def test_v1_round_trip(pair: tuple[str, str], sport: int, dport: int, rest: bytes) -> None:
    header = v1(pair[0], sport, pair[1], dport)
    assert len(header) <= V1_MAX
    assert header_end(header + rest) == len(header)
    assert whole(header + rest) == ProxyHeader(1, pair[0], sport, pair[1], dport)


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, tlvs, after)
def test_v2_round_trip_skips_tlvs(pair: tuple[str, str], sport: int, dport: int, extra: bytes,
                                  rest: bytes) -> None:
    header = v2(pair[0], sport, pair[1], dport, extra)
    assert header_end(header + rest) == len(header)
    assert whole(header + rest) == ProxyHeader(2, pair[0], sport, pair[1], dport)


@given(st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6)), ports, ports, tlvs,
       st.booleans())
def test_every_prefix_asks_for_more(pair: tuple[str, str], sport: int, dport: int,
                                    extra: bytes, text: bool) -> None:
    header = v1(pair[0], sport, pair[1], dport) if text else v2(pair[0], sport, pair[1],
                                                                dport, extra)
    for cut in range(1, len(header)):
        assert header_end(header[:cut]) is None


def test_the_balancers_own_connections_name_no_client() -> None:
    assert whole(v2(None, local=True)) == ProxyHeader(2)  # LOCAL: a health check
    assert whole(v2(None, local=True, tlvs=b"\x04\x00\x01x")) == ProxyHeader(2)
    assert whole(b"PROXY UNKNOWN\r\n") == ProxyHeader(1)
    assert whole(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == ProxyHeader(1)
    # PROXY over AF_UNSPEC: no address to take
    assert whole(V2_SIGNATURE + b"\x21\x00\x00\x00") == ProxyHeader(2)


@pytest.mark.parametrize(("data", "reason"), [
    (b"GET / HTTP/1.1\r\n", "not_proxy_protocol"),
    (b"\x16\x03\x01\x02\x00", "not_proxy_protocol"),  # a ClientHello
    (b"PROXZ TCP4", "not_proxy_protocol"),
    (b"\r\n\r\n\x00\r\nQUIX\n", "not_proxy_protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2" + b" " * 100, "malformed"),  # no CRLF in 107 bytes
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "malformed"),  # LF without CR
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r2\r\n", "malformed"),
    (V2_SIGNATURE + b"\x21\x11" + (V2_MAX_PAYLOAD + 1).to_bytes(2, "big"), "malformed"),
])
def test_what_is_no_header_is_refused_from_its_first_bytes(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        header_end(data)
    assert caught.value.reason == reason


@pytest.mark.parametrize(("header", "reason"), [
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed"),
    (b"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", "malformed"),
    (b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "malformed"),
    (b"PROXY TCP4 ::1 ::2 1 2\r\n", "malformed"),
    (b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
    (b"PROXY TCP6 fe80::1%eth0 ::2 1 2\r\n", "malformed"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "malformed"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "malformed"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "malformed"),
    (b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", "unsupported"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.\xff 1 2\r\n", "malformed"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "unsupported"),  # version 1 in v2
    (V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unsupported"),  # command 2
    (V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216), "unsupported"),  # AF_UNIX
    (V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "unsupported"),  # family 4
    (V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "unsupported"),  # DGRAM
    (V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "malformed"),  # short IPv4 block
    (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "malformed"),  # IPv6 in 12 bytes
])
def test_a_whole_header_that_says_nothing_usable_is_refused(header: bytes,
                                                            reason: str) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        whole(header)
    assert caught.value.reason == reason


@pytest.mark.parametrize("header", [
    b"PROXY TCP6 ::ffff:198.51.100.7 ::ffff:192.0.2.1 40000 443\r\n",
    v2("::ffff:198.51.100.7", 40000, "::ffff:192.0.2.1", 443),
])
def test_an_ipv4_mapped_client_reads_as_a_socket_names_it(header: bytes) -> None:
    """A dual-stack balancer's IPv4 client (haproxy on `:::443 v4v6` sends TCP6 with mapped
    addresses) is `::ffff:198.51.100.7`, as a dual-stack socket's peer name reads, not
    `::ffff:c633:6407` (the same address, written as no log or app expects it)."""
    assert whole(header) == ProxyHeader(1 if header.startswith(b"P") else 2,
                                        "::ffff:198.51.100.7", 40000, "::ffff:192.0.2.1", 443)

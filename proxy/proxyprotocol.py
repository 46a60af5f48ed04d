"""The PROXY protocol header (haproxy's proxy-protocol.txt, v1 text and v2 binary): parsed.

`header_end` tells, from the bytes a connection opened with so far, where its header ends
(None: not yet, every byte so far is header); `parse` reads a whole header. The gateway's
acceptor reads one per connection before anything else (proxy.proxyread).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_MAX = 107  # the longest v1 line, CRLF included (the spec's bound)
# The longest v2 address block with its TLVs we take: an IPv6 block is 36 bytes, and
# haproxy's TLVs (ALPN, authority, unique id up to 128 bytes, SSL details) fit many times.
V2_MAX_PAYLOAD = 2048
_V2_HEAD = 16
_ADDRESS_BLOCK = {0x1: 12, 0x2: 36}  # AF_INET, AF_INET6: two addresses and two ports


class ProxyHeaderError(ValueError):
    """A connection's first bytes are no PROXY header we take; ``reason`` is the metric's."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # not_proxy_protocol | malformed | unsupported


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What a header says: the client's address and port, or None for a connection the
    balancer made itself (v2 LOCAL, v1 UNKNOWN, v2 AF_UNSPEC): its own peer is the client."""

    version: int
    source: str | None = None
    source_port: int = 0
    destination: str | None = None
    destination_port: int = 0


def header_end(data: bytes) -> int | None:
    """How many of ``data``'s first bytes are the header, once it is whole; None while every
    byte is a header's beginning. Raises ProxyHeaderError when they can be none."""
    if data[:1] == b"P":
        if not data.startswith(V1_PREFIX[:len(data)]):
            raise ProxyHeaderError("not_proxy_protocol", f"no PROXY header: {data[:16]!r}")
        return _v1_end(data)
    if not data.startswith(V2_SIGNATURE[:len(data)]):
        raise ProxyHeaderError("not_proxy_protocol", f"no PROXY header: {data[:16]!r}")
    if len(data) < _V2_HEAD:
        return None
    length = int.from_bytes(data[14:16], "big")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError("malformed", f"v2 header of {length} bytes after its first 16: "
                                            f"more than {V2_MAX_PAYLOAD}")
    end = _V2_HEAD + length
    return end if len(data) >= end else None


def _v1_end(data: bytes) -> int | None:
    newline = data.find(b"\n", 0, V1_MAX)
    if newline < 0:
        if len(data) >= V1_MAX:
            raise ProxyHeaderError("malformed", f"v1 line without CRLF in its first {V1_MAX} "
                                                "bytes")
        if b"\r" in data[:-1]:
            raise ProxyHeaderError("malformed", "v1 line with a CR not followed by LF")
        return None
    if data[newline - 1:newline] != b"\r" or b"\r" in data[:newline - 1]:
        raise ProxyHeaderError("malformed", "v1 line not ended by its first CRLF")
    return newline + 1


def parse(header: bytes) -> ProxyHeader:
    """A whole header (``header_end``'s bytes) read; raises ProxyHeaderError."""
    if header.startswith(V1_PREFIX):
        return _parse_v1(header)
    return _parse_v2(header)


def _parse_v1(header: bytes) -> ProxyHeader:
    try:
        line = header[len(V1_PREFIX):-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("malformed", "v1 line is not ASCII") from None
    if line == "UNKNOWN" or line.startswith("UNKNOWN "):
        # the balancer's own connection (what follows is ignored)
        return ProxyHeader(1)
    fields = line.split(" ")
    if len(fields) != 5:
        raise ProxyHeaderError("malformed", f"v1 line has {len(fields)} fields, not 5: "
                                            f"{line[:60]!r}")
    family, src, dst, sport, dport = fields
    if family not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("unsupported", f"v1 protocol {family[:10]!r}")
    want = 4 if family == "TCP4" else 6
    return ProxyHeader(1, _v1_address(src, want), _v1_port(sport),
                       _v1_address(dst, want), _v1_port(dport))


def _v1_address(text: str, version: int) -> str:
    try:
        if "%" in text:  # (a scoped IPv6 address names an interface of the balancer's)
            raise ValueError(text)
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError("malformed", f"v1 address {text[:45]!r}") from None
    if address.version != version:
        raise ProxyHeaderError("malformed", f"v1 address {text!r} is not IPv{version}")
    return _text(address)


def _text(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """``address`` written as a socket's peer name writes it (inet_ntop): an IPv4-mapped
    one, as a dual-stack balancer names an IPv4 client, `::ffff:198.51.100.7` (Python's own
    str() before 3.13 writes `::ffff:c633:6407`)."""
    if address.version == 6:
        return socket.inet_ntop(socket.AF_INET6, address.packed)
    return str(address)


def _v1_port(text: str) -> int:
    # decimal, no sign, no leading zero (the spec's form)
    if not (text.isdigit() and text.isascii() and len(text) <= 5
            and (text == "0" or text[0] != "0") and int(text) <= 65535):
        raise ProxyHeaderError("malformed", f"v1 port {text[:8]!r}")
    return int(text)


def _parse_v2(header: bytes) -> ProxyHeader:
    version, command = header[12] >> 4, header[12] & 0xF
    family, transport = header[13] >> 4, header[13] & 0xF
    if version != 2:
        raise ProxyHeaderError("unsupported", f"v2 signature with version {version}")
    if command == 0x0:  # LOCAL: the balancer's own connection (a health check)
        return ProxyHeader(2)
    if command != 0x1:
        raise ProxyHeaderError("unsupported", f"v2 command {command:#x}")
    if family == 0x0:  # AF_UNSPEC: no address to take; the connection's own
        return ProxyHeader(2)
    size = _ADDRESS_BLOCK.get(family)
    if size is None:
        raise ProxyHeaderError("unsupported", f"v2 address family {family:#x}")
    if transport != 0x1:
        raise ProxyHeaderError("unsupported", f"v2 transport {transport:#x}, not STREAM")
    block = header[_V2_HEAD:]
    if len(block) < size:
        raise ProxyHeaderError("malformed", f"v2 address block of {len(block)} bytes, "
                                            f"{size} needed")
    half = (size - 4) // 2  # (what follows the addresses, TLVs, is skipped)
    src = ipaddress.ip_address(block[:half])
    dst = ipaddress.ip_address(block[half:2 * half])
    ports = block[2 * half:size]
    return ProxyHeader(2, _text(src), int.from_bytes(ports[:2], "big"), _text(dst),
                       int.from_bytes(ports[2:], "big"))


def v1(source: str, source_port: int, destination: str, destination_port: int) -> bytes:
    """A v1 header for these addresses (tests, tools)."""
    family = "TCP6" if ":" in source else "TCP4"
    return (f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n"
            .encode())


def v2(source: str | None, source_port: int = 0, destination: str | None = None,
       destination_port: int = 0, tlvs: bytes = b"", *, local: bool = False) -> bytes:
    """A v2 header for these addresses (tests, tools); ``local``: the LOCAL command."""
    if local or source is None or destination is None:
        return V2_SIGNATURE + bytes((0x20 if local else 0x21, 0x00)) + len(tlvs).to_bytes(
            2, "big") + tlvs
    src, dst = ipaddress.ip_address(source), ipaddress.ip_address(destination)
    family = 0x11 if src.version == 4 else 0x21
    block = (src.packed + dst.packed + source_port.to_bytes(2, "big")
             + destination_port.to_bytes(2, "big") + tlvs)
    return V2_SIGNATURE + bytes((0x21, family)) + len(block).to_bytes(2, "big") + block

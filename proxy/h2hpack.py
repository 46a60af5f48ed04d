"""HPACK for the proxy's HTTP/2 connections: an encoder and a decoder cheaper than hpack's.

hpack's `Encoder` searches its dynamic table linearly for every header (~60 entries once the
4 KiB table fills, and it fills: it indexes every header, the per-request `x-request-id` and
`date` too, so the table churns) and Huffman-codes literals in Python. This one keeps the same
table as two dicts (header -> insertion number, name -> insertion number) and a FIFO for
eviction, so a lookup is one dict access; it sends literals raw (header blocks grow by about a
quarter for literals, on hops where CPU, not bytes, runs out); and it indexes as nghttp2 does:
not headers whose values change per request.

It also does what h2's outbound normalisation did, which the connections turn off (its chain
of generators cost more than the encoding): connection-specific headers are dropped (RFC 9113
8.2.2), and credentials are sent never-indexed (RFC 7541 7.1.3: `authorization`,
`proxy-authorization`, short cookies, as h2 and nghttp2 do; and a header handed over as
hpack's `NeverIndexedHeaderTuple`, such as trailers passed on as they came).

The decoder (`MeshDecoder`) reads a block in one loop where hpack calls three functions and
logs twice per header, and copies the rest of the block for each literal. It keeps hpack's
limits: the header list size (HPACK bombs), the table size the peer may use, truncation.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.exceptions import (
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    OversizedHeaderListError,
)
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

_STATIC_FULL: dict[tuple[bytes, bytes], bytes] = {}  # a static entry -> its indexed encoding
_STATIC_NAME: dict[bytes, int] = {}  # a static name -> its first index
for _i, (_n, _v) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FULL.setdefault((_n, _v), bytes((0x80 | _i,)))
    _STATIC_NAME.setdefault(_n, _i)

# Dropped: forbidden in HTTP/2 (h2's normalisation dropped them too).
_CONNECTION = frozenset({b"connection", b"proxy-connection", b"keep-alive",
                         b"transfer-encoding", b"upgrade"})
_SECRET = frozenset({b"authorization", b"proxy-authorization"})
# Not indexed, their values seldom repeat: nghttp2's list, and the per-request headers the
# proxy adds or forwards (ids, trace context).
_NO_INDEX = frozenset({b":path", b"age", b"content-length", b"etag", b"if-modified-since",
                       b"if-none-match", b"location", b"set-cookie", b"date", b"last-modified",
                       b"x-request-id", b"traceparent", b"tracestate", b"x-b3-traceid",
                       b"x-b3-spanid", b"x-b3-parentspanid", b"grpc-timeout"})
_ENTRY = 32  # RFC 7541 4.1: an entry's size is its name's and value's lengths plus 32


def _int(value: int, bits: int, flags: int) -> bytes:
    """An HPACK integer with a `bits`-bit prefix, `flags` in the first byte's high bits."""
    limit = (1 << bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(value: bytes) -> bytes:
    n = len(value)
    return (_BYTE[n] if n < 127 else _int(n, 7, 0)) + value


# The first bytes of the common representations, by index (a static or recent entry): one
# list lookup instead of a call per header.
_BYTE = [bytes((i,)) for i in range(256)]
_INDEXED = [_int(i, 7, 0x80) for i in range(128)]
_PLAIN = [_int(i, 4, 0x00) for i in range(128)]  # literal, not indexed, indexed name
_INCREMENTAL = [_int(i, 6, 0x40) for i in range(128)]  # literal, indexed, indexed name


class MeshEncoder(Encoder):
    """hpack's Encoder, same wire format, for the proxy's use (see the module's doc)."""

    def __init__(self) -> None:
        super().__init__()
        self._max = self.header_table.maxsize
        self._size = 0
        self._count = 0  # entries ever inserted: the newest has number _count - 1
        self._fifo: deque[tuple[bytes, bytes, int, int]] = deque()  # oldest first
        self._full: dict[tuple[bytes, bytes], int] = {}
        self._names: dict[bytes, int] = {}
        self._resized: list[int] = []

    @property
    def header_table_size(self) -> int:
        return self._max

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        """The peer's SETTINGS_HEADER_TABLE_SIZE: signalled at the next block's start."""
        self._max = int(value)
        self._shrink()
        self._resized.append(self._max)

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        out: list[bytes] = [_int(size, 5, 0x20) for size in self._resized]
        self._resized.clear()
        full, static_full, static_name = self._full, _STATIC_FULL, _STATIC_NAME
        for header in headers:
            name, value = header
            if name in _CONNECTION:
                continue
            if header.__class__ is NeverIndexedHeaderTuple or name in _SECRET or (
                    name == b"cookie" and len(value) < 20):
                index = static_name.get(name) or self._name_index(name)
                out.append((_int(index, 4, 0x10) if index else b"\x10" + _literal(name))
                           + _literal(value))
                continue
            key = (name, value)
            encoded = static_full.get(key)
            if encoded is not None:
                out.append(encoded)
                continue
            number = full.get(key)
            if number is not None:
                index = 61 + self._count - number
                out.append(_INDEXED[index] if index < 128 else _int(index, 7, 0x80))
                continue
            index = static_name.get(name) or self._name_index(name)
            size = len(name) + len(value) + _ENTRY
            if name in _NO_INDEX or size > self._max * 3 // 4:  # (nghttp2's limit too)
                head = (_PLAIN[index] if index < 128 else _int(index, 4, 0)) if index \
                    else b"\x00" + _literal(name)
            else:
                head = (_INCREMENTAL[index] if index < 128 else _int(index, 6, 0x40)) if index \
                    else b"\x40" + _literal(name)
                self._insert(name, value, size)
            n = len(value)
            out.append(head + (_BYTE[n] if n < 127 else _int(n, 7, 0)) + value)
        return b"".join(out)

    def _name_index(self, name: bytes) -> int:
        number = self._names.get(name)
        return 0 if number is None else 61 + self._count - number

    def _insert(self, name: bytes, value: bytes, size: int) -> None:
        number = self._count
        self._count = number + 1
        self._fifo.append((name, value, size, number))
        self._full[(name, value)] = number
        self._names[name] = number
        self._size += size
        self._shrink()

    def _shrink(self) -> None:
        fifo, full, names = self._fifo, self._full, self._names
        while self._size > self._max:
            name, value, size, number = fifo.popleft()
            self._size -= size
            if full.get((name, value)) == number:
                del full[(name, value)]
            if names.get(name) == number:
                del names[name]


_STATIC = HeaderTable.STATIC_TABLE
_MAX_INT_BYTES = 5  # continuation bytes of an integer: 2**35, beyond any frame's content


def _varint(data: bytes, i: int, value: int) -> tuple[int, int]:
    """The continuation of an integer whose prefix (`value`) was full, from `data[i]`:
    (the integer, the index after it)."""
    shift = 0
    for i in range(i, min(len(data), i + _MAX_INT_BYTES)):  # noqa: B020
        byte = data[i]
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i + 1
        shift += 7
    raise HPACKDecodingError("Truncated or overlong integer in the header block")


class MeshDecoder(Decoder):
    """hpack's Decoder, the same results and errors, in one loop (see the module's doc).
    `block`: the last block decoded whole (what `proxy.h2malformed` reads when h2 refused
    one after decoding it)."""

    block: list[Any] = []

    def decode(self, data: bytes, raw: bool = False) -> Any:
        if not raw:
            return super().decode(data, raw)
        table = self.header_table
        entries = table.dynamic_entries  # newest first
        headers: list[Any] = []
        limit = self.max_header_list_size
        inflated = 0
        i, end = 0, len(data)
        while i < end:
            byte = data[i]
            i += 1
            if byte & 0x80:  # indexed
                index = byte & 0x7F
                if index == 0x7F:
                    index, i = _varint(data, i, index)
                if 0 < index <= 61:
                    header = _STATIC[index - 1]
                elif 61 < index <= 61 + len(entries):
                    header = entries[index - 62]
                else:
                    raise InvalidTableIndexError(f"Invalid table index {index}")
            elif byte & 0xE0 == 0x20:  # dynamic table size update: before any header
                if headers:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size = byte & 0x1F
                if size == 0x1F:
                    size, i = _varint(data, i, size)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                continue
            else:  # a literal: with incremental indexing, without, or never indexed
                indexing = byte & 0x40
                index = byte & (0x3F if indexing else 0x0F)
                if index == (0x3F if indexing else 0x0F):
                    index, i = _varint(data, i, index)
                if index:
                    if 0 < index <= 61:
                        name = _STATIC[index - 1][0]
                    elif index <= 61 + len(entries):
                        name = entries[index - 62][0]
                    else:
                        raise InvalidTableIndexError(f"Invalid table index {index}")
                else:
                    name, i = self._string(data, i, end)
                value, i = self._string(data, i, end)
                if indexing:
                    table.add(name, value)
                    header = (name, value)
                elif byte & 0x10:
                    header = NeverIndexedHeaderTuple(name, value)
                else:
                    header = (name, value)
            headers.append(header)
            inflated += len(header[0]) + len(header[1]) + _ENTRY
            if inflated > limit:
                raise OversizedHeaderListError(
                    f"A header list larger than {limit} has been received")
        self._assert_valid_table_size()
        self.block = headers
        return headers

    @staticmethod
    def _string(data: bytes, i: int, end: int) -> tuple[bytes, int]:
        """A string literal at `data[i]`: (its bytes, the index after it)."""
        if i >= end:
            raise HPACKDecodingError("Truncated header block")
        byte = data[i]
        length = byte & 0x7F
        i += 1
        if length == 0x7F:
            length, i = _varint(data, i, length)
        stop = i + length
        if stop > end:
            raise HPACKDecodingError("Truncated header block")
        text = data[i:stop]
        return (decode_huffman(text) if byte & 0x80 else text), stop

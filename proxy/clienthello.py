"""Reads the server name (SNI) of a TLS ClientHello as its bytes arrive, record by record.

A small parser rather than OpenSSL's own (an `ssl.SSLObject` over a MemoryBIO with an
`sni_callback`): the gateway has to know how many bytes to wait for (`needed`, the record and
message lengths) and to refuse an oversized hello before holding it, which OpenSSL does not
tell; and OpenSSL only calls the callback after it has accepted the hello by its own policy
(TLS 1.2 minimum, its cipher suites, a certificate to offer), while a passed-through
connection's TLS is the app's business: the gateway must route a hello it would not accept
itself. It reads only the framing and the `server_name` extension, checking every length
(RFC 8446 4.1.2 and 5.1, RFC 6066 3), and looks at each byte once however the hello is cut
(1-byte reads, 1-byte records): its work grows with the hello's size, not with its pieces.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

RECORD_HANDSHAKE = 0x16  # a TLS record's content type: handshake
_CLIENT_HELLO = 1  # handshake message type
_SERVER_NAME = 0  # extension type (RFC 6066)
_HOST_NAME = 0  # ServerName name_type
_EXTENSION = struct.Struct(">HH")  # an extension's type and length
MAX_RECORD = 1 << 14  # bytes of a record's payload (RFC 8446 5.1)
# A ClientHello is 0.3-2 KiB (post-quantum key shares included); 16 KiB is a full record.
# The records carrying it may add up to twice that (headers of tiny records), no more.
MAX_HELLO = 16 * 1024
MAX_BYTES = 2 * MAX_HELLO
# A host name as clients send it: letters, digits, `-` and `_` (seen in real names), dots
# between labels of 1-63 characters; one final dot allowed (and dropped).
_HOST = re.compile(r"(?:[a-z0-9_](?:[-a-z0-9_]{0,61}[a-z0-9_])?\.)*"
                   r"[a-z0-9_](?:[-a-z0-9_]{0,61}[a-z0-9_])?\.?")


class HelloError(ValueError):
    """The bytes are no TLS ClientHello this reader takes (malformed, or over the limits)."""


@dataclass(frozen=True, slots=True)
class ClientHello:
    """What the gateway routes by: the server name, lower-case (None: the client sent none)."""

    server_name: str | None


class HelloReader:
    """Fed the connection's first bytes in any pieces, returns the ClientHello once complete.

    Only the records' payloads are kept (at most MAX_BYTES); their headers are read as they
    pass. `needed` is how many bytes, from the first, must have arrived before `feed` can
    say more: the caller may wait for that many at once."""

    __slots__ = ("_head", "_left", "_message", "_read", "_want")

    def __init__(self) -> None:
        self._read = 0  # bytes fed so far
        self._head = b""  # a record header split across reads
        self._left = 0  # payload bytes of the current record still to come
        self._message = bytearray()  # the handshake message so far
        self._want: int | None = None  # its whole size, once its 4-byte header is in

    @property
    def needed(self) -> int:
        if not self._left:
            return self._read + 5 - len(self._head)
        missing = (self._want if self._want is not None else 4) - len(self._message)
        return self._read + min(self._left, max(missing, 1))

    def feed(self, data: bytes | bytearray | memoryview) -> ClientHello | None:
        """The hello once its last byte is in (bytes after it are not looked at), else None;
        raises HelloError."""
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if not self._left:
                take = min(5 - len(self._head), end - pos)
                self._head += bytes(view[pos:pos + take])
                pos += take
                self._read += take
                if len(self._head) < 5:
                    return None
                self._start_record(self._head)
                self._head = b""
                continue
            take = min(self._left, end - pos)
            self._message += view[pos:pos + take]
            pos += take
            self._read += take
            self._left -= take
            hello = self._check_message()
            if hello is not None:
                return hello
        return None

    def _start_record(self, head: bytes) -> None:
        kind, major, length = head[0], head[1], int.from_bytes(head[3:5], "big")
        if kind != RECORD_HANDSHAKE:
            raise HelloError(f"a record of type {kind} before the ClientHello ended")
        if major != 3:
            raise HelloError(f"record version {major}.{head[2]}: not TLS")
        if not 0 < length <= MAX_RECORD:
            raise HelloError(f"a handshake record of {length} bytes")
        if self._read + length > MAX_BYTES:
            raise HelloError(f"ClientHello records over {MAX_BYTES} bytes")
        self._left = length

    def _check_message(self) -> ClientHello | None:
        message = self._message
        if self._want is None:
            if len(message) < 4:
                return None
            if message[0] != _CLIENT_HELLO:
                raise HelloError(f"handshake message {message[0]}, not a ClientHello")
            self._want = 4 + int.from_bytes(message[1:4], "big")
            if self._want > MAX_HELLO:
                raise HelloError(f"a ClientHello of {self._want} bytes, over {MAX_HELLO}")
        if len(message) < self._want:
            return None
        return ClientHello(server_name(bytes(message[4:self._want])))


class _Cursor:
    """Reads a structure's fields in order; any read past its end is a HelloError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def done(self) -> bool:
        return self.pos == len(self.data)

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise HelloError(f"{what} runs past the end of its field")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "big")

    def vector(self, size_bytes: int, what: str) -> bytes:
        """A field prefixed by its length in ``size_bytes`` bytes."""
        n = self.u8(what) if size_bytes == 1 else self.u16(what)
        return self.take(n, what)


def server_name(body: bytes) -> str | None:
    """The host name of a ClientHello body's `server_name` extension (lower-case, without a
    final dot), None when there is no such extension."""
    hello = _Cursor(body)
    hello.take(2 + 32, "the version and random")
    if len(hello.vector(1, "the session id")) > 32:
        raise HelloError("a session id over 32 bytes")
    suites = hello.vector(2, "the cipher suites")
    if not suites or len(suites) % 2:
        raise HelloError(f"cipher suites of {len(suites)} bytes")
    if not hello.vector(1, "the compression methods"):
        raise HelloError("no compression method")
    if hello.done:
        return None  # a hello without extensions (TLS 1.2 allows it): no name
    extensions = hello.vector(2, "the extensions")
    if not hello.done:
        raise HelloError("bytes after the extensions")
    seen: set[int] = set()
    name = None
    pos, end = 0, len(extensions)
    while pos < end:  # (unrolled: a hello has 10-20 extensions, this is most of the work)
        if pos + 4 > end:
            raise HelloError("an extension header runs past the end of its field")
        kind, size = _EXTENSION.unpack_from(extensions, pos)
        pos += 4
        if pos + size > end:
            raise HelloError(f"extension {kind} runs past the end of its field")
        if kind in seen:  # RFC 8446 4.2: never twice (which one would the server take?)
            raise HelloError(f"extension {kind} twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            name = _host_name(extensions[pos:pos + size])
        pos += size
    return name


def _host_name(data: bytes) -> str:
    """The one host_name of a server_name extension. As OpenSSL: exactly one entry, of type
    host_name (RFC 6066 allows one name per type, and defines no other type)."""
    extension = _Cursor(data)
    names = _Cursor(extension.vector(2, "the server name list"))
    if not extension.done:
        raise HelloError("bytes after the server name list")
    kind = names.u8("a server name type")
    if kind != _HOST_NAME:
        raise HelloError(f"a server name of type {kind}")
    raw = names.vector(2, "the host name")
    if not names.done:
        raise HelloError("more than one server name")
    text = raw.decode("latin-1").lower()
    if len(raw) > 254 or not _HOST.fullmatch(text):
        raise HelloError(f"server name {text[:64]!r} is no host name")
    return text.removesuffix(".")

"""The response head the client gets: upstream headers minus hop-by-hop ones, and its framing.

The status line carries the standard reason phrase. The body's framing towards the client is
decided here once per response: as the upstream framed it when it gave a length, chunked when
it did not, read-until-close for an HTTP/1.0 client, none for HEAD/204/304/101.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.layers import HeaderEditor
    from proxy.upstream import UpstreamConnection

FRAME_NONE, FRAME_LENGTH, FRAME_CHUNKED, FRAME_CLOSE = 0, 1, 2, 3


class UpstreamProtocolError(Exception):
    """Raised from a response-parsing callback: the upstream broke HTTP/1.1 (answered with
    `502 upstream_protocol_error`, like a response llhttp itself rejects)."""
_CRLF = b"\r\n"
_PLAIN_CONNECTION = frozenset({b"keep-alive", b"close"})
_PLAIN_OR_NONE = frozenset({b"keep-alive", b"close", None})
# The reason phrase is not forwarded: RFC 9112 (4) has clients ignore it, and a fixed table
# makes the status line one dict lookup (Envoy does the same).
_STATUS_LINES = {int(s): b"HTTP/1.1 %d %s\r\n" % (s, s.phrase.encode()) for s in HTTPStatus}


def check_interim(conn: UpstreamConnection, status: int, upgrade_requested: bool) -> None:
    """A status below 200 other than a 101 that completes an upgrade: an interim (1xx) response,
    which ends with its head (RFC 9110 15.2), or an error."""
    if status < 100:
        raise UpstreamProtocolError(f"status {status}")
    if status == 101:
        # Only in answer to an Upgrade request, and with Upgrade and Connection: upgrade
        # (RFC 9110 15.2.2); else the client would get a protocol switch it never asked for.
        raise UpstreamProtocolError("101 without an upgrade" if upgrade_requested
                                    else "101 to a request without Upgrade")
    if conn.transfer_encoding or conn.content_length not in (None, b"0"):
        # llhttp would read a body here (all 1xx but 100, 102 and 103), which has no place to
        # go but the client connection, in front of the final response's head.
        raise UpstreamProtocolError(f"{status} with a body")


def status_line(status: int) -> bytes:
    """`HTTP/1.1 <code> <standard phrase>`; an unregistered code gets an empty phrase."""
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def client_head(conn: UpstreamConnection, status: int, head_only: bool, http10: bool,
                keep_alive: bool, edits: HeaderEditor | None) -> tuple[bytes, int]:
    """The head for the client and the frame of the body that follows.

    `head_only`: no body follows (HEAD, 204, 304); `keep_alive` says whether the client
    connection stays open after this response; FRAME_CLOSE means it cannot (an HTTP/1.0
    client reading a body of unknown length). (Positional: called once per response.)
    """
    line = _STATUS_LINES.get(status)
    out = [line if line is not None else status_line(status)]
    length = conn.content_length
    connection = conn.connection_header
    if (length is not None and keep_alive and edits is None and not head_only and not http10
            and connection in _PLAIN_OR_NONE and not conn.transfer_encoding
            and status != 101):
        # The common response: a length, no edits, the client kept alive; what the general
        # path below would build, without its tests.
        out.extend(conn.header_parts)
        out.extend((b"content-length: ", length, b"\r\n\r\n"))
        return b"".join(out), FRAME_LENGTH
    if status == 101:
        out.extend(conn.header_parts if edits is None else conn.header_lines())
        if connection is not None:
            out.append(b"connection: " + connection + _CRLF)
        if conn.upgrade_header is not None:
            out.append(b"upgrade: " + conn.upgrade_header + _CRLF)
    elif connection is not None and connection not in _PLAIN_CONNECTION and (
            # (the exact `keep-alive` or `close` most servers send needs no strip and lower)
            connection.find(b",") >= 0  # not `in`: see requesthead
            or connection.strip().lower() not in _PLAIN_CONNECTION):
        # Headers named in Connection are hop-by-hop too (RFC 9110 7.6.1).
        tokens = {t.strip().lower() for t in connection.split(b",")}
        out.extend(kept for kept in conn.header_lines()
                   if kept.split(b":", 1)[0].lower() not in tokens)
    elif edits is None:
        out.extend(conn.header_parts)  # the parts go to the join as they are
    else:
        out.extend(conn.header_lines())  # edits work on whole lines
    if edits is not None:
        out = edits.apply(out)
    if status == 101:
        frame = FRAME_NONE
    elif head_only:
        frame = FRAME_NONE
        if length is not None and status != 204:  # (a 204 has none: RFC 9110 8.6)
            out.extend((b"content-length: ", length, _CRLF))
    elif length is not None and not conn.transfer_encoding:
        frame = FRAME_LENGTH
        out.extend((b"content-length: ", length, _CRLF))
    elif http10:
        frame = FRAME_CLOSE
        keep_alive = False
    else:
        frame = FRAME_CHUNKED
        out.append(b"transfer-encoding: chunked\r\n")
    if not keep_alive and status != 101:  # (a 101's connection is the tunnel's now)
        out.append(b"connection: close\r\n")
    elif http10:
        out.append(b"connection: keep-alive\r\n")
    out.append(_CRLF)
    return b"".join(out), frame

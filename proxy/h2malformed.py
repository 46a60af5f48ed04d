"""A malformed HTTP/2 message is a stream error, not a connection error (RFC 9113 8.1.1).

A request or response whose header block breaks RFC 9113 8.2/8.3 (`proxy.h2headers`), whose
`content-length` is not a number or disagrees with its DATA frames, or whose trailers do not
end the stream, costs its own stream alone: RST_STREAM PROTOCOL_ERROR, and the owner of the
connection gets a `MessageMalformed` event instead of the message (a request naming no
authority, or two, is left open for a `400` instead: `proxy.h2headers.Unroutable`). The
header block was decoded all the same, so the connection's HPACK state stays in step. What
must still end the connection does: a block HPACK could not decode (COMPRESSION_ERROR, RFC
9113 4.3), a decoded list over the size limit (h2's DenialOfServiceError), frame and
stream-state errors.

A request block carrying `:status` (a response pseudo-header, RFC 9113 8.3) is malformed like
any other; but h2 takes a block whose first `:status` is 1xx for an interim response, which a
server's stream cannot receive, and fails the stream's state machine instead (leaving it idle
or closed): such a stream is put back where the client's HEADERS frame put it and reset as
malformed (`_misread_request`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.events import Event
from h2.exceptions import InvalidBodyLengthError, ProtocolError, StreamClosedError
from h2.stream import StreamClosedBy, StreamState
from hpack.exceptions import HPACKError

from proxy.h2headers import Unroutable

if TYPE_CHECKING:
    from h2.connection import H2Connection
    from h2.stream import H2Stream

# What h2 turns into a plain ProtocolError when a header block cannot be decoded
_UNDECODABLE = (HPACKError, IndexError, TypeError, UnicodeDecodeError)
_NOT_RESETTABLE = (StreamState.IDLE, StreamState.CLOSED)
# Only the plain errors of a message's content: h2's other subclasses are frame,
# flow-control, stream-id and DoS errors
_STREAM_ERRORS = (ProtocolError, InvalidBodyLengthError, Unroutable)


class MessageMalformed(Event):
    """A received request or response (or its trailers, or its DATA) was malformed: its
    stream has been reset with PROTOCOL_ERROR (unless `answer`); `detail` says what was
    wrong."""

    def __init__(self, stream_id: int, detail: str, answer: str | None = None,
                 head: bool = False) -> None:
        self.stream_id = stream_id
        self.detail = detail
        # Not reset but left open to be answered with this reason word (proxy.h2headers'
        # Unroutable); `head`: a HEAD request's answer has no body
        self.answer = answer
        self.head = head

    def __repr__(self) -> str:
        return f"<MessageMalformed stream_id:{self.stream_id}, detail:{self.detail}>"


def stream_error(h2: H2Connection, stream_id: int, exc: ProtocolError,
                 block: list | None = None) -> list[Event]:  # type: ignore[type-arg]
    """`exc` was raised receiving a header block (`block`, decoded) or DATA of `stream_id`:
    reset that stream alone where RFC 9113 8.1.1 has a stream error, else raise `exc` (a
    connection error)."""
    if isinstance(exc.__cause__, _UNDECODABLE):
        # the decoder's table may be out of step with the peer's: nothing after can be read
        exc.error_code = ErrorCodes.COMPRESSION_ERROR
        raise exc
    stream = h2.streams.get(stream_id)
    if type(exc) not in _STREAM_ERRORS or stream is None:
        raise exc
    state = stream.state_machine.state
    if state in _NOT_RESETTABLE and block is not None and not h2.config.client_side and any(
            name == b":status" for name, _ in block):
        state = _misread_request(stream, exc)
    if isinstance(exc, Unroutable) and state not in _NOT_RESETTABLE:
        return [MessageMalformed(stream_id, str(exc), "bad_request", exc.head)]
    if state is StreamState.CLOSED and stream.closed_by is StreamClosedBy.RECV_END_STREAM:
        # The message ended the stream, whose other half had ended already (a response to a
        # whole request): it is dropped, and no frame may follow on a closed stream.
        return [MessageMalformed(stream_id, str(exc))]
    if state in _NOT_RESETTABLE:  # (closed by h2's state machine: a stream-state error)
        raise exc
    h2.reset_stream(stream_id, ErrorCodes.PROTOCOL_ERROR)
    return [MessageMalformed(stream_id, str(exc))]


def _misread_request(stream: H2Stream, exc: ProtocolError) -> StreamState:
    """A client's block with a 1xx `:status` that h2 took for an interim response: its stream
    failed in h2's state machine, left idle (the block also ended the stream) or closed with
    nothing to say how. Put back open, as the client's HEADERS frame left it, to be reset as
    malformed; on a stream closed before it (a late frame), what h2 does with any HEADERS
    there (raised as StreamClosedError: a reset if we had reset it, else a connection error)."""
    machine = stream.state_machine
    if machine.state is StreamState.CLOSED and machine.stream_closed_by is not None:
        raise StreamClosedError(stream.stream_id) from exc
    machine.state = StreamState.OPEN
    return StreamState.OPEN

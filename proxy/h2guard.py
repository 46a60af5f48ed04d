"""What the `h2` library leaves to its user, for both sides' HTTP/2 connections: a graceful
GOAWAY, a bounded memory of closed streams, HPACK tuned for CPU (`proxy.h2hpack`), and a
malformed message as a stream error (`proxy.h2malformed`).

Graceful GOAWAY: h2 moves its connection to CLOSED as soon as it sends or receives a GOAWAY,
and from then on refuses every frame either way (python-hyper/h2#1181), although RFC 9113 6.8
lets the streams up to the GOAWAY's last stream id finish. So a graceful GOAWAY is written
here as a raw frame, leaving h2's state alone, and a received graceful one leaves it open
(`MeshH2Connection`).
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import _error_code_from_int
from h2.events import (
    ConnectionTerminated,
    Event,
    InformationalResponseReceived,
    RequestReceived,
    ResponseReceived,
    TrailersReceived,
)
from h2.exceptions import InvalidBodyLengthError, ProtocolError
from h2.stream import StreamClosedBy
from hyperframe.frame import DataFrame, Frame, GoAwayFrame, HeadersFrame, WindowUpdateFrame

from proxy import h2headers, h2malformed
from proxy.h2fast import FastH2Connection
from proxy.h2hpack import MeshDecoder, MeshEncoder


def configuration(client_side: bool) -> H2Configuration:
    """Both sides' h2 settings. h2's outbound normalisation and validation are off: they ran a
    chain of generators over every header block the proxy sends (a quarter of h2's work per
    request), checking what the proxy builds itself from headers h2 validated on the way in, or
    from an HTTP/1.1 head httptools parsed. What they did that matters, `MeshEncoder` does
    (connection-specific headers dropped, credentials never indexed); names are lower-cased
    where the proxy builds a block (`H2Exchange`, `h2downgrade`)."""
    return H2Configuration(client_side=client_side, header_encoding=None,
                           validate_outbound_headers=False, normalize_outbound_headers=False,
                           # checked by MeshH2Connection instead (proxy.h2headers)
                           validate_inbound_headers=False, normalize_inbound_headers=False)


def goaway(h2: H2Connection, last_stream_id: int, error_code: int = 0) -> bytes:
    """What h2 has queued, then a GOAWAY after which the connection's streams go on."""
    frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code)
    return h2.data_to_send() + frame.serialize()


class MeshH2Connection(FastH2Connection):
    """h2's connection, with a graceful GOAWAY (NO_ERROR) received as one, the proxy's HPACK
    encoder and decoder (`proxy.h2hpack`), received header blocks checked in one pass
    (`proxy.h2headers`; a malformed one, or DATA not adding up to its content-length, resets
    its stream alone: `proxy.h2malformed`), and a bounded memory of closed streams.

    Closed streams: h2 remembers how each closed stream ended, for the last 65536 of them (an
    ordered dict, ~120 bytes a stream: ~8 MB on every long-lived connection, both sides, once
    it has carried that many requests). It only tells a late frame on a stream we reset (a
    stream error: RST_STREAM) from a frame on one that ended normally (a connection error);
    RFC 9113 5.1 lets that period be limited. Here the last `MAX_CLOSED_STREAMS` are kept, and
    a frame on a stream closed before them is a stream error, as for a reset one: a peer's
    late frame never ends the whole connection.

    h2 closes the connection on any GOAWAY it receives and clears what it had queued to send,
    so frames for the streams the GOAWAY spares that arrive in the same read (a server saying
    goodbye after its answers, as nginx does every 1000 requests) were protocol errors, and
    our queued frames were lost. Here the state stays open; the owner opens no new stream.
    """

    MAX_CLOSED_STREAMS = 1024

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.encoder = MeshEncoder()
        limit = self.decoder.max_header_list_size
        self.decoder = MeshDecoder()
        self.decoder.max_header_list_size = limit

    def _stream_closed_by(self, stream_id: int) -> StreamClosedBy | None:
        closed_by = super()._stream_closed_by(stream_id)
        if closed_by is None and stream_id not in self.streams and (
                len(self._closed_streams) >= self.MAX_CLOSED_STREAMS):
            # Forgotten (or skipped by the peer, which h2 also reports as None): treated as
            # reset by us, so a late frame gets RST_STREAM STREAM_CLOSED, not a GOAWAY.
            return StreamClosedBy.SEND_RST_STREAM
        return closed_by

    def _receive_headers_frame(self, frame: HeadersFrame) -> Any:
        """h2's, then the block checked by `proxy.h2headers` (h2's own inbound checks are off);
        a malformed message resets its stream alone (`proxy.h2malformed`)."""
        try:
            frames, events = super()._receive_headers_frame(frame)
            for event in events:
                kind = _BLOCK_KINDS.get(type(event))
                if kind is not None:
                    event.headers = h2headers.check(event.headers, kind)  # type: ignore[attr-defined]
        except ProtocolError as exc:
            return [], h2malformed.stream_error(self, frame.stream_id, exc,
                                                self.decoder.block)  # type: ignore[attr-defined]
        return frames, events

    def _receive_data_frame(self, frame: DataFrame) -> tuple[list[Frame], list[Event]]:
        """h2's; DATA beyond the stream's `content-length` (or ending it short) resets that
        stream alone, and the frame's share of the connection window goes back (no one
        reads it)."""
        try:
            return super()._receive_data_frame(frame)
        except InvalidBodyLengthError as exc:
            events = h2malformed.stream_error(self, frame.stream_id, exc)
        increment = self._inbound_flow_control_window_manager.process_bytes(
            frame.flow_controlled_length)
        frames: list[Frame] = []
        if increment:
            frames.append(WindowUpdateFrame(0, window_increment=increment))
        return frames, events

    def _receive_goaway_frame(self, frame: GoAwayFrame) -> Any:
        if frame.error_code != 0:
            return super()._receive_goaway_frame(frame)
        event = ConnectionTerminated()
        event.error_code = _error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


_BLOCK_KINDS = {RequestReceived: h2headers.REQUEST, ResponseReceived: h2headers.RESPONSE,
                InformationalResponseReceived: h2headers.RESPONSE,
                TrailersReceived: h2headers.TRAILERS}

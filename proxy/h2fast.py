"""h2's per-frame hot paths, overridden by equivalent cheaper code: same checks, same state."""

from __future__ import annotations

import struct
from typing import Any

from h2.config import H2Configuration
from h2.connection import AllowedStreamIDs, ConnectionInputs, H2Connection, _decode_headers
from h2.errors import ErrorCodes
from h2.events import Event, TrailersReceived
from h2.exceptions import (
    FlowControlError,
    FrameTooLargeError,
    ProtocolError,
    StreamClosedError,
    StreamIDTooLowError,
    TooManyStreamsError,
)
from h2.settings import SettingCodes
from h2.stream import STREAM_OPEN, H2Stream, StreamInputs, StreamState
from h2.utilities import authority_from_headers, extract_method_header, is_informational_response
from hyperframe.frame import Frame, HeadersFrame, RstStreamFrame

from proxy.h2frames import FastFrameBuffer
from proxy.h2states import ConnectionStateMachine, StreamStateMachine

_HEAD = struct.Struct(">HBBBL")  # hyperframe's frame header: length (24 bits), type, flags, id
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
# AllowedStreamIDs by "odd?" (h2 calls the enum for every stream it opens)
_IDS = (AllowedStreamIDs.EVEN, AllowedStreamIDs.ODD)
_WINDOW = SettingCodes.INITIAL_WINDOW_SIZE


class FastH2Connection(H2Connection):
    """h2's `H2Connection` with methods the proxy calls per request or frame rewritten without
    work that does not change the outcome; each says what it leaves out. Every check h2 makes
    on a peer's frames is still made, in h2's order, raising h2's errors (tests/test_h2fast.py:
    the same bytes, events, errors and states as h2's own connection)."""

    def __init__(self, config: H2Configuration) -> None:
        super().__init__(config)
        self.state_machine = ConnectionStateMachine()  # (a new one: IDLE, as h2's)
        self.incoming_buffer = FastFrameBuffer(server=not config.client_side)  # (empty, too)
        # Received blocks handed on as decoded: h2's inbound pipeline (validation,
        # normalisation, decoding to str) is all off (the proxy's: `h2guard.configuration`).
        self._raw_inbound = not (config.validate_inbound_headers
                                 or config.normalize_inbound_headers or config.header_encoding)

    def _receive_frame(self, frame: Frame) -> list[Event]:
        """h2's, without its trace log: the call formatted `repr(frame)` (the whole frame,
        flags sorted, data hex-dumped) for every frame received, even with logging off."""
        events: list[Event]
        try:
            frames, events = self._frame_dispatch_table[frame.__class__](frame)
        except StreamClosedError as e:
            # Closed by our RST_STREAM: a stream error; else a connection error (as h2).
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = e.error_code
                self._prepare_for_sending([f])
                events = e._events
            else:
                raise
        except StreamIDTooLowError as e:
            # As h2: after our reset a stream error, after END_STREAM a connection error
            # (STREAM_CLOSED), else (closed implicitly) PROTOCOL_ERROR.
            if self._stream_is_closed_by_reset(e.stream_id):
                f = RstStreamFrame(e.stream_id)
                f.error_code = ErrorCodes.STREAM_CLOSED
                self._prepare_for_sending([f])
                events = []
            elif self._stream_is_closed_by_end(e.stream_id):
                raise StreamClosedError(e.stream_id) from e
            else:
                raise
        else:
            if frames:
                self._prepare_for_sending(frames)
        return events

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        """h2's, without a generator for the join and another for its size assertion."""
        limit = self.max_outbound_frame_size
        out = self._data_to_send
        for f in frames:
            out += f.serialize()
            assert f.body_len <= limit

    def _begin_new_stream(self, stream_id: int, allowed_ids: AllowedStreamIDs) -> H2Stream:
        """h2's, the stream's state machine `h2states`' (IDLE, as h2's), without three debug
        log calls (one made a view of the stream ids for each stream)."""
        outbound = stream_id % 2 == int(self.config.client_side)
        highest = self.highest_outbound_stream_id if outbound else self.highest_inbound_stream_id
        if stream_id <= highest:
            raise StreamIDTooLowError(stream_id, highest)
        if stream_id % 2 != int(allowed_ids):
            raise ProtocolError("Invalid stream ID for peer.")
        # The windows read from the settings' table (h2's Settings: a deque per setting, the
        # current value first, INITIAL_WINDOW_SIZE's always set), not through a property and
        # `__getitem__` each.
        s = H2Stream(stream_id, config=self.config,
                     inbound_window_size=self.local_settings._settings[_WINDOW][0],
                     outbound_window_size=self.remote_settings._settings[_WINDOW][0])
        s.state_machine = StreamStateMachine(stream_id)
        s.max_outbound_frame_size = self.max_outbound_frame_size
        self.streams[stream_id] = s
        if outbound:
            self.highest_outbound_stream_id = stream_id
        else:
            self.highest_inbound_stream_id = stream_id
        return s

    def _open_streams(self, remainder: int) -> int:
        """h2's count of open streams of one parity, which also forgets closed streams (their
        end remembered in `_closed_streams`): run for every stream opened either way. The
        same walk, reading each stream's state once instead of through two properties."""
        count = 0
        closed = []
        for stream_id, stream in self.streams.items():
            state = stream.state_machine.state
            if STREAM_OPEN[state] and stream_id % 2 == remainder:
                count += 1
            elif state == StreamState.CLOSED:
                closed.append(stream_id)
        for stream_id in closed:
            self._closed_streams[stream_id] = self.streams.pop(stream_id).closed_by
        return count

    def _receive_headers_frame(self, frame: HeadersFrame) -> tuple[list[Frame], list[Event]]:
        """h2's (connection and stream), the block handed on as decoded (h2 ran it through
        its pipeline, all off here, then copied it) and no header validation flags built for
        that pipeline. A HEADERS frame with PRIORITY goes to h2's."""
        flags = frame.flags
        if not self._raw_inbound or "PRIORITY" in flags:
            return super()._receive_headers_frame(frame)
        stream_id = frame.stream_id
        stream = self.streams.get(stream_id)
        if stream is None:
            limit = self.local_settings.max_concurrent_streams
            value = self.open_inbound_streams
            if value + 1 > limit:
                raise TooManyStreamsError(f"Max inbound streams is {limit}, {value} open")
        headers = _decode_headers(self.decoder, frame.data)
        events = self.state_machine.process_input(ConnectionInputs.RECV_HEADERS)
        if stream is None:
            stream = self._begin_new_stream(stream_id, _IDS[not self.config.client_side])
        # h2's H2Stream.receive_headers
        end_stream = "END_STREAM" in flags
        machine = stream.state_machine
        if is_informational_response(headers):
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses")
            stream_events = machine.process_input(StreamInputs.RECV_INFORMATIONAL_HEADERS)
        else:
            stream_events = machine.process_input(StreamInputs.RECV_HEADERS)
        event = stream_events[0]
        if end_stream:
            ended = machine.process_input(StreamInputs.RECV_END_STREAM)
            event.stream_ended = ended[0]  # type: ignore[attr-defined]
            stream_events += ended
        stream._initialize_content_length(headers)
        if not end_stream and isinstance(event, TrailersReceived):
            raise ProtocolError("Trailers must have END_STREAM set")
        event.headers = headers  # type: ignore[attr-defined]
        return [], events + stream_events

    def send_headers(self, stream_id: int, headers: Any, end_stream: bool = False,
                     priority_weight: int | None = None, priority_depends_on: int | None = None,
                     priority_exclusive: bool | None = None) -> None:
        """h2's (connection and stream), the frames written as bytes: no frame objects, no
        copy of the block through `utf8_encode_headers` (the proxy's headers are bytes), no
        header validation flags (outbound validation is off: `h2guard.configuration`).
        `headers`: a list of pairs of bytes, or hpack's `HeaderTuple`s."""
        if priority_weight is not None or priority_depends_on is not None or (
                priority_exclusive is not None):
            return super().send_headers(stream_id, headers, end_stream, priority_weight,
                                        priority_depends_on, priority_exclusive)
        stream = self.streams.get(stream_id)
        if stream is None:
            limit = self.remote_settings.max_concurrent_streams
            value = self.open_outbound_streams
            if value + 1 > limit:
                raise TooManyStreamsError(f"Max outbound streams is {limit}, {value} open")
        self.state_machine.process_input(ConnectionInputs.SEND_HEADERS)
        if stream is None:
            stream = self._begin_new_stream(stream_id, _IDS[self.config.client_side])
        # h2's H2Stream.send_headers: the transition before the encoding (which changes the
        # HPACK context for good), END_STREAM after it.
        machine = stream.state_machine
        if not machine.client and is_informational_response(headers):
            if end_stream:
                raise ProtocolError("Cannot set END_STREAM on informational responses.")
            machine.process_input(StreamInputs.SEND_INFORMATIONAL_HEADERS)
        else:
            machine.process_input(StreamInputs.SEND_HEADERS)
        block = self.encoder.encode(headers)
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
        if machine.trailers_sent and not end_stream:
            raise ProtocolError("Trailers must have END_STREAM set.")
        if machine.client and stream._authority is None:
            stream._authority = authority_from_headers(headers)
        stream.request_method = extract_method_header(headers)
        self._data_to_send += _headers_frames(stream_id, block, stream.max_outbound_frame_size or 0,
                                              _END_STREAM if end_stream else 0)

    def send_data(self, stream_id: int, data: bytes | memoryview, end_stream: bool = False,
                  pad_length: Any = None) -> None:
        """h2's (connection and stream), the frame written as bytes, not built as a `DataFrame`
        and serialised."""
        if pad_length is not None:
            return super().send_data(stream_id, data, end_stream, pad_length)
        size = len(data)
        if size > 0 and size > self.local_flow_control_window(stream_id):
            raise FlowControlError(f"Cannot send {size} bytes, flow control window is "
                                   f"{self.local_flow_control_window(stream_id)}")
        if size > self.max_outbound_frame_size:
            raise FrameTooLargeError(f"Cannot send frame size {size}, max frame size is "
                                     f"{self.max_outbound_frame_size}")
        self.state_machine.process_input(ConnectionInputs.SEND_DATA)
        stream = self.streams[stream_id]
        machine = stream.state_machine
        machine.process_input(StreamInputs.SEND_DATA)
        flags = 0
        if end_stream:
            machine.process_input(StreamInputs.SEND_END_STREAM)
            flags = _END_STREAM
        stream.outbound_flow_control_window -= size
        out = self._data_to_send
        out += _HEAD.pack(size >> 8, size & 0xFF, _DATA, flags, stream_id & 0x7FFFFFFF)
        out += data
        self.outbound_flow_control_window -= size


def _headers_frames(stream_id: int, block: bytes, limit: int, flags: int) -> bytes:
    """A header block as HEADERS (then CONTINUATION frames when it exceeds `limit`), as h2's
    `_build_headers_frames` cuts it; `flags` (END_STREAM) on the HEADERS frame."""
    sid = stream_id & 0x7FFFFFFF
    size = len(block)
    if size <= limit:
        return _HEAD.pack(size >> 8, size & 0xFF, _HEADERS, flags | _END_HEADERS, sid) + block
    parts = []
    kind = _HEADERS
    for start in range(0, size, limit):
        chunk = block[start:start + limit]
        n = len(chunk)
        if start + limit >= size:
            flags |= _END_HEADERS
        parts.append(_HEAD.pack(n >> 8, n & 0xFF, kind, flags, sid))
        parts.append(chunk)
        kind, flags = _CONTINUATION, 0
    return b"".join(parts)

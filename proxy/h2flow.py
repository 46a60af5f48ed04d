"""HTTP/2 sending under flow control, shared by the client-facing and the upstream side.

The `h2` library frames, checks and accounts windows but refuses DATA beyond the peer's window;
a `StreamOut` keeps what does not fit yet (and the END_STREAM or trailers that must follow it)
and says when it is blocked, which the proxy turns into backpressure on the other side.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from h2.connection import H2Connection

Headers = list[tuple[bytes, bytes]]


class StreamOut:
    """What one stream still has to send: DATA beyond the window, then its end."""

    __slots__ = ("_end", "_held", "_trailers", "ended", "h2", "on_blocked", "stream_id")

    def __init__(self, h2: H2Connection, stream_id: int, on_blocked: Any) -> None:
        self.h2 = h2
        self.stream_id = stream_id
        self.on_blocked = on_blocked  # called with True when data is held, False once sent
        self._held: deque[memoryview] = deque()
        self._end = False  # END_STREAM requested, sent after the held data
        self._trailers: Headers | None = None
        self.ended = False  # END_STREAM (with or without trailers) has been sent

    @property
    def blocked(self) -> bool:
        return bool(self._held)

    @property
    def held_bytes(self) -> int:
        return sum(len(view) for view in self._held)

    def data(self, chunk: bytes, end: bool = False) -> None:
        """Send `chunk` as far as the window allows; hold the rest. With `end`, the stream ends
        with it: on its last DATA frame when it all fits, not an empty frame after."""
        if self.ended:
            return
        if self._held or not chunk:
            if chunk:
                self._held.append(memoryview(chunk))
            if end:
                self.end()
            return
        rest = self._send(chunk, end)
        if rest is not None:
            self._held.append(rest)
            self.on_blocked(True)
            if end:
                self._end = True
        elif end:
            self.ended = True

    def end(self, trailers: Headers | None = None) -> None:
        """End the stream (with trailers if given) once the held data has gone."""
        if self.ended:
            return
        if self._held:
            self._end = True
            self._trailers = trailers
            return
        self._finish(trailers)

    def pump(self) -> None:
        """The window grew: send what is held, then the end if it was asked for (on the last
        DATA frame when no trailers follow, not an empty one after it)."""
        held = self._held
        if not held:
            return
        last = False
        while held:
            last = len(held) == 1 and self._end and self._trailers is None
            rest = self._send(held[0], last)
            if rest is not None:
                held[0] = rest
                return
            held.popleft()
        self.on_blocked(False)
        if self._end:
            self._end = False
            if last:
                self.ended = True
            else:
                self._finish(self._trailers)

    def _send(self, data: bytes | memoryview, end: bool = False) -> memoryview | None:
        """Send what fits (ending the stream with the last of it if `end`); the unsent tail, or
        None when all of it went."""
        h2 = self.h2
        sid = self.stream_id
        while data:
            room = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
            if room <= 0:
                return memoryview(data)
            if len(data) <= room:  # all of it: one frame, and no copy of a whole chunk
                h2.send_data(sid, data if isinstance(data, bytes) else data.tobytes(),
                             end_stream=end)
                return None
            view = memoryview(data)
            h2.send_data(sid, view[:room].tobytes())
            data = view[room:]
        return None

    def _finish(self, trailers: Headers | None) -> None:
        self.ended = True
        if trailers:
            self.h2.send_headers(self.stream_id, trailers, end_stream=True)
        else:
            self.h2.end_stream(self.stream_id)


def received(owner: Any, stream: Any, stream_id: int, size: int) -> Any:
    """Flow control for DATA that arrived on `stream` (of connection `owner`): the window goes
    back at once, or when the stream's reader resumes if it is paused (its backpressure).
    Returns the exchange that reads the stream; None when none does any more (the window then
    goes back at once)."""
    ex = stream.exchange if stream is not None else None
    if ex is None or not stream.paused:
        owner.ack(stream_id, size)
    else:
        stream.unacked += size
    return ex

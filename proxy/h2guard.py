"""What the `h2` library leaves to its user, for both sides' HTTP/2 connections.

Graceful GOAWAY: h2 moves its connection to CLOSED as soon as it sends or receives a GOAWAY,
and from then on refuses every frame either way (python-hyper/h2#1181), although RFC 9113 6.8
lets the streams up to the GOAWAY's last stream id finish. So a graceful GOAWAY is written
here as a raw frame, leaving h2's state alone, and after a received one h2 is put back in the
open state while streams remain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2.connection import ConnectionState
from hyperframe.frame import GoAwayFrame

if TYPE_CHECKING:
    from h2.connection import H2Connection


def goaway(h2: H2Connection, last_stream_id: int, error_code: int = 0) -> bytes:
    """What h2 has queued, then a GOAWAY after which the connection's streams go on."""
    frame = GoAwayFrame(0, last_stream_id=last_stream_id, error_code=error_code)
    return h2.data_to_send() + frame.serialize()


def keep_open(h2: H2Connection) -> None:
    """After a received GOAWAY: let the streams it spared finish (h2 would refuse their
    frames). Opening new streams is the caller's to avoid."""
    h2.state_machine.state = (ConnectionState.CLIENT_OPEN if h2.config.client_side
                              else ConnectionState.SERVER_OPEN)

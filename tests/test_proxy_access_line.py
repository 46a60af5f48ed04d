"""The access log line's formatter writes exactly what json.dumps writes for the same fields."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from time import gmtime, strftime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy import accessline
from proxy.accessline import FIELDS, access_line, wall_start

text = st.text()
# (what wall_start writes: RFC 3339, UTC, milliseconds)
starts = st.datetimes().map(
    lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z")
numbers = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=1 << 62)


@given(st.tuples(starts, text, st.none() | text, st.none() | text, st.none() | text,
                 st.integers(0, 999), text, numbers, counts, counts, st.none() | text, text,
                 text, st.none() | text, st.none() | text, st.none() | text, st.none() | text))
def test_a_line_is_json_dumps_of_its_fields(values: tuple) -> None:  # type: ignore[type-arg]
    """Any strings (quotes, control characters, non-ASCII, lone surrogates), floats and nulls."""
    expected = json.dumps(dict(zip(FIELDS, values, strict=True)), separators=(",", ":")) + "\n"
    assert access_line(*values) == expected


def test_a_refused_request_has_null_request_fields() -> None:
    line = access_line("2026-11-29T11:50:00.123Z", "inbound", None, None, None, 400,
                       "bad_request", 0.0, 0, 11, None, "unknown", "unknown", None, None, None,
                       "192.0.2.7")
    assert json.loads(line) == {
        "start_time": "2026-11-29T11:50:00.123Z", "listener": "inbound", "method": None,
        "path": None, "authority": None, "status": 400, "reason": "bad_request", "duration_ms": 0.0,
        "bytes_received": 0, "bytes_sent": 11, "request_id": None, "source": "unknown",
        "destination_service": "unknown", "upstream": None, "protocol": None,
        "grpc_status": None, "client_address": "192.0.2.7"}


class Clocks:
    """The two clocks `wall_start` reads, set by the test."""

    def __init__(self, wall: float, mono: float) -> None:
        self.wall, self.mono = wall, mono

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    strftime = staticmethod(strftime)
    gmtime = staticmethod(gmtime)


def test_a_start_on_the_monotonic_clock_is_logged_as_the_wall_clock_time_it_was(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 3339 UTC with milliseconds (as Envoy's START_TIME), the request's start: now on
    the wall clock less the time since the start on the monotonic one; the second's text is
    reused, and a new second gets its own."""
    now = datetime(2026, 11, 29, 11, 50, 7, 250_000, tzinfo=UTC).timestamp()
    clocks = Clocks(now, 1000.0)
    monkeypatch.setattr(accessline, "time", clocks)
    assert wall_start(1000.0 - 1.5) == "2026-11-29T11:50:05.750Z"
    assert wall_start(1000.0 - 1.9) == "2026-11-29T11:50:05.350Z"
    assert wall_start(1000.0 - 0.2) == "2026-11-29T11:50:07.050Z"
    clocks.wall += 86400  # a day later: the date moves too
    assert wall_start(1000.0) == "2026-11-30T11:50:07.250Z"

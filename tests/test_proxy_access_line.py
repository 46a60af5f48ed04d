"""The access log line's formatter writes exactly what json.dumps writes for the same fields."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from proxy.accessline import FIELDS, access_line

text = st.text()
numbers = st.floats(allow_nan=False, allow_infinity=False)
counts = st.integers(min_value=0, max_value=1 << 62)


@given(st.tuples(numbers, text, st.none() | text, st.none() | text, st.none() | text,
                 st.integers(0, 999), text, numbers, counts, counts, st.none() | text, text,
                 text, st.none() | text, st.none() | text, st.none() | text))
def test_a_line_is_json_dumps_of_its_fields(values: tuple) -> None:  # type: ignore[type-arg]
    """Any strings (quotes, control characters, non-ASCII, lone surrogates), floats and nulls."""
    expected = json.dumps(dict(zip(FIELDS, values, strict=True)), separators=(",", ":")) + "\n"
    assert access_line(*values) == expected


def test_a_refused_request_has_null_request_fields() -> None:
    line = access_line(12.5, "inbound", None, None, None, 400, "bad_request", 0.0, 0, 11, None,
                       "unknown", "unknown", None, None, None)
    assert json.loads(line) == {
        "start_time": 12.5, "listener": "inbound", "method": None, "path": None,
        "authority": None, "status": 400, "reason": "bad_request", "duration_ms": 0.0,
        "bytes_received": 0, "bytes_sent": 11, "request_id": None, "source": "unknown",
        "destination_service": "unknown", "upstream": None, "protocol": None,
        "grpc_status": None}

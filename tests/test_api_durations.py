"""Tests for duration strings (meshctl.api.durations)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshctl.api.durations import format_duration, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("250ms", 0.25), ("1.5s", 1.5), ("2m", 120.0), ("24h", 86400.0), ("0s", 0.0),
    ("1m30s", 90.0), ("1h0m1s", 3601.0),
])
def test_parse_duration_accepts_units(text: str, seconds: float) -> None:
    """Numbers with ms, s, m or h units (also combined) parse to seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "message"), [
    ("3", "duration '3' has no unit, expected ms, s, m or h"),
    ("-1s", "duration '-1s' must not be negative"),
    ("1d", "invalid duration '1d', expected a number and unit like 250ms, 1.5s, 2m or 24h"),
    ("", "invalid duration '', expected a number and unit like 250ms, 1.5s, 2m or 24h"),
    (" 1s", "invalid duration ' 1s', expected a number and unit like 250ms, 1.5s, 2m or 24h"),
])
def test_parse_duration_errors_say_what_is_wrong(text: str, message: str) -> None:
    """Malformed durations raise ValueError with a message naming the problem."""
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert str(err.value) == message


def test_parse_duration_rejects_non_strings() -> None:
    """A YAML number where a duration is expected is refused, with the value shown."""
    with pytest.raises(ValueError, match="expected a duration string"):
        parse_duration(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (0.25, "250ms"), (1.5, "1.5s"), (90, "90s"), (120, "2m"), (86400, "24h"),
    (0.0005, "0.5ms"), (5400, "90m"),
])
def test_format_duration_picks_the_usual_unit(seconds: float, text: str) -> None:
    """format_duration spells seconds with the largest unit that divides them."""
    assert format_duration(seconds) == text


def test_format_duration_rejects_negative() -> None:
    """Negative durations have no spelling."""
    with pytest.raises(ValueError, match="negative"):
        format_duration(-1)


@given(st.integers(min_value=0, max_value=10**9))
def test_format_then_parse_round_trips(millis: int) -> None:
    """Any whole number of milliseconds survives format_duration then parse_duration."""
    seconds = millis / 1000
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)

"""Go-style duration strings ("250ms", "1.5s", "2m", "24h", "1m30s") to and from float seconds."""

from __future__ import annotations

import math
import re

# Shared with the JSON Schema so that editors and the parser accept exactly the same strings.
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|h|m|s))+$"
ZERO_DURATION_PATTERN = r"^(0+(\.0+)?(ms|h|m|s))+$"

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_WHOLE = re.compile(DURATION_PATTERN)


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError naming what is wrong with it."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string like '250ms' or '3s', got {text!r}")
    if not _WHOLE.fullmatch(text):
        if re.fullmatch(r"[0-9]+(\.[0-9]+)?", text):
            raise ValueError(f"duration '{text}' has no unit, expected ms, s, m or h")
        if text.startswith("-"):
            raise ValueError(f"duration '{text}' must not be negative")
        raise ValueError(f"invalid duration '{text}', expected a number and unit like 250ms, "
                         "1.5s, 2m or 24h")
    return sum(float(number) * _UNITS[unit] for number, unit in _PART.findall(text))


def format_duration(seconds: float) -> str:
    """The shortest usual spelling of ``seconds``: 0.25 -> '250ms', 90 -> '90s', 7200 -> '2h'."""
    if seconds < 0:
        raise ValueError(f"duration must not be negative, got {seconds}")
    millis = round(seconds * 1000, 6)
    if millis == 0:
        return "0s"
    if millis % 3_600_000 == 0:
        return f"{_number(millis / 3_600_000)}h"
    if millis % 60_000 == 0:
        return f"{_number(millis / 60_000)}m"
    if millis < 1000:
        return f"{_number(millis)}ms"
    return f"{_number(millis / 1000)}s"


def _number(value: float) -> str:
    """A decimal without exponent or trailing zeros (repr could give '1e-05')."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


_WINDOW_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_window(text: str) -> float:
    """A metrics window (``meshctl stat --window``, ``?window=``): ``30s``, ``5m``, ``1h`` or
    plain seconds. Raises ValueError unless it is a finite number of seconds above 0 (``nan``,
    ``inf``, ``0`` and ``-5m`` included)."""
    unit = _WINDOW_UNITS.get(text[-1:])
    try:
        value = float(text[:-1] if unit else text) * (unit or 1.0)
    except ValueError:
        raise ValueError(f"expected e.g. 30s or 5m, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a duration above 0 like 30s or 5m, got {text!r}")
    return value


def parse_seconds(text: str, *, zero: bool = False) -> float:
    """A plain number of seconds (``?seconds=``, ``?timeout=``); ValueError unless finite
    and above 0 (at least 0 with ``zero``)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not zero):
        least = "0 or more" if zero else "above 0"
        raise ValueError(f"expected a number of seconds {least}, got {text!r}")
    return value

"""Typed readers for YAML-decoded values that record every problem with its field path."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from meshctl.api.durations import format_duration, parse_duration
from meshctl.api.errors import Issue, ValidationError, fail

T = TypeVar("T")
D = TypeVar("D")
Conv = Callable[[object, str], T]
"""A converter: takes a raw value and its field path, returns the typed value or raises."""

# Patterns are written once here and reused by the JSON Schema (ECMA-262 compatible, anchored).
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$"
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
HEADER_NAME = r"^[-!#$%&'*+.^_`|~0-9A-Za-z]+$"
HEADER_VALUE = r"^[^\r\n\x00]*$"
# A value the proxy writes into a header itself: what HTTP allows (tab, visible ASCII, space,
# obs-text 0x80-0xFF), so it encodes as latin-1 on the wire.
HEADER_FIELD_VALUE = r"^[\t\x20-\x7e\x80-\xff]*$"
METHOD = r"^[A-Z]+$"
SPIFFE_ID = r"^spiffe://[-a-zA-Z0-9._]+(/[^\s]*)?$"
_PORT = r"([0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
PORT = _PORT  # a port number (0-65535) as a regex fragment
HOST_PORT = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?):" + _PORT + "$"


def describe(value: object) -> str:
    """How a YAML value reads in an error message ('a list', 'null', ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return type(value).__name__


def join(path: str, key: str) -> str:
    """The field path of ``key`` inside ``path``."""
    return f"{path}.{key}" if path else key


def integer(minimum: int | None = None, maximum: int | None = None) -> Conv[int]:
    """An integer in [minimum, maximum] (YAML booleans are not integers; 3.0 is)."""

    def convert(value: object, path: str) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            fail(path, f"expected an integer, got {describe(value)}")
        _check_range(value, minimum, maximum, path)
        return value

    return convert


def number(minimum: float | None = None, maximum: float | None = None) -> Conv[float]:
    """A number (integer or decimal) in [minimum, maximum]."""

    def convert(value: object, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(path, f"expected a number, got {describe(value)}")
        if not math.isfinite(value):  # YAML .inf/.nan, JSON 1e400: no range check holds them
            fail(path, f"expected a finite number, got {value}")
        _check_range(value, minimum, maximum, path)
        return float(value)

    return convert


def _check_range(value: float, minimum: float | None, maximum: float | None, path: str) -> None:
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        fail(path, f"must be between {minimum:g} and {maximum:g}, got {value:g}")
    if minimum is not None and value < minimum:
        fail(path, f"must be at least {minimum:g}, got {value:g}")
    if maximum is not None and value > maximum:
        fail(path, f"must be at most {maximum:g}, got {value:g}")


def boolean(value: object, path: str) -> bool:
    """true or false."""
    if not isinstance(value, bool):
        fail(path, f"expected true or false, got {describe(value)}")
    return value


def string(pattern: str | None = None, what: str = "", max_length: int | None = None) -> Conv[str]:
    """A non-empty string, optionally matching ``pattern`` (``what`` names the expected form)."""
    compiled = re.compile(pattern) if pattern else None

    def convert(value: object, path: str) -> str:
        if not isinstance(value, str):
            fail(path, f"expected a string, got {describe(value)}")
        if not value:
            fail(path, "must not be empty")
        if max_length is not None and len(value) > max_length:
            fail(path, f"must be at most {max_length} characters, got {len(value)}")
        if compiled is not None and not compiled.fullmatch(value):
            fail(path, f"invalid value {value!r}, expected {what or 'a match for ' + str(pattern)}")
        return value

    return convert


def enum(choices: tuple[str, ...]) -> Conv[str]:
    """One of ``choices``, spelled exactly."""

    def convert(value: object, path: str) -> str:
        if not isinstance(value, str) or value not in choices:
            shown = repr(value) if isinstance(value, str) else describe(value)
            fail(path, f"unknown value {shown}, expected one of {', '.join(choices)}")
        return value

    return convert


def duration(minimum: float = 0.0, *, zero: str = "") -> Conv[float]:
    """A positive duration string (seconds), at least ``minimum`` seconds when given; with
    ``zero`` (what it means, e.g. "never"), `0s` is allowed too."""

    def convert(value: object, path: str) -> float:
        try:
            seconds = parse_duration(value)  # type: ignore[arg-type]  # checked inside
        except ValueError as err:
            fail(path, str(err))
        if seconds == 0 and zero:
            return 0.0
        if seconds <= 0:
            fail(path, f"must be a positive duration{f' or 0s ({zero})' if zero else ''}, "
                       f"got {value}")
        if seconds < minimum:
            fail(path, f"must be at least {format_duration(minimum)}, got {value}")
        return seconds

    return convert


def list_of(item: Conv[T], min_items: int = 0, empty: str = "") -> Conv[tuple[T, ...]]:
    """A list whose items all convert; reports every bad item, not just the first."""

    def convert(value: object, path: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            fail(path, f"expected a list, got {describe(value)}")
        if len(value) < min_items:
            fail(path, empty or f"must have at least {min_items} item(s)")
        items: list[T] = []
        issues: list[Issue] = []
        for index, raw in enumerate(value):
            try:
                items.append(item(raw, f"{path}[{index}]"))
            except ValidationError as err:
                issues.extend(err.issues)
        if issues:
            raise ValidationError(issues)
        return tuple(items)

    return convert


def string_map(key: Conv[str], value: Conv[T]) -> Conv[dict[str, T]]:
    """A mapping with checked keys and values (paths name each key)."""

    def convert(raw: object, path: str) -> dict[str, T]:
        if not isinstance(raw, Mapping):
            fail(path, f"expected a mapping, got {describe(raw)}")
        result: dict[str, T] = {}
        issues: list[Issue] = []
        for raw_key, raw_value in raw.items():
            where = join(path, str(raw_key))
            try:
                checked_key = key(raw_key, where)
                result[checked_key] = value(raw_value, where)
            except ValidationError as err:
                issues.extend(err.issues)
        if issues:
            raise ValidationError(issues)
        return result

    return convert


def service_selector(data: object, path: str) -> str:
    """`selector: {service: NAME}`, the workload a policy kind applies to (a DNS-1123 label)."""
    f = Fields(data, path)
    service = f.required("service", string(DNS_LABEL, "a DNS-1123 label"), "")
    f.finish()
    return service


class Fields:
    """Reads one mapping field by field, collecting every problem; ``finish()`` raises them all.

    Each key read through a method becomes a known field, so ``finish()`` can reject the rest as
    unknown (typos such as ``weigth`` would otherwise be silently ignored).
    """

    def __init__(self, value: object, path: str) -> None:
        if not isinstance(value, Mapping):
            fail(path, f"expected a mapping, got {describe(value)}")
        self.path = path
        self.issues: list[Issue] = []
        self._data: Mapping[object, object] = value
        self._known: set[str] = set()

    def at(self, key: str) -> str:
        """The field path of ``key``."""
        return join(self.path, key)

    def has(self, key: str) -> bool:
        """Whether ``key`` is present (and known)."""
        self._known.add(key)
        return key in self._data

    def raw(self, key: str) -> object:
        """The unconverted value of ``key`` (None when absent)."""
        self._known.add(key)
        return self._data.get(key)

    def optional(self, key: str, conv: Conv[T]) -> T | None:
        """The converted value, or None when absent or invalid (the problem is recorded)."""
        if not self.has(key):
            return None
        try:
            return conv(self._data[key], self.at(key))
        except ValidationError as err:
            self.issues.extend(err.issues)
            return None

    def value(self, key: str, conv: Conv[T], default: D) -> T | D:
        """The converted value, or ``default`` when absent or invalid."""
        result = self.optional(key, conv)
        return default if result is None else result

    def required(self, key: str, conv: Conv[T], placeholder: D) -> T | D:
        """The converted value; records 'field is required' when absent.

        ``placeholder`` is returned on any problem; it is never seen by callers because
        ``finish()`` raises.
        """
        if not self.has(key):
            self.add(self.at(key), "field is required")
            return placeholder
        return self.value(key, conv, placeholder)

    def add(self, path: str, message: str) -> None:
        """Record a problem found by a check across fields."""
        self.issues.append(Issue(None, None, path, message))

    def finish(self) -> None:
        """Record unknown fields, then raise every recorded problem."""
        for key in self._data:
            if not isinstance(key, str):
                self.add(self.path, f"field names must be strings, got {describe(key)} {key!r}")
            elif key not in self._known:
                close = difflib.get_close_matches(key, sorted(self._known), n=1)
                hint = f"did you mean '{close[0]}'?" if close else (
                    f"expected one of {', '.join(sorted(self._known))}" if self._known
                    else "no fields are allowed here")
                self.add(self.at(key), f"unknown field, {hint}")
        if self.issues:
            raise ValidationError(self.issues)


def _label_value(value: object, path: str) -> str:
    if value == "":
        return ""
    if isinstance(value, bool | int | float):
        fail(path, f"expected a string, got {describe(value)} (quote it: \"{value}\")")
    return string(LABEL_VALUE, "a label value (up to 63 letters, digits, '-', '_', '.')")(
        value, path)


labels: Conv[dict[str, str]] = string_map(
    string(LABEL_KEY, "a label key like 'version' or 'app.example.com/tier'"), _label_value)
"""A label map (Kubernetes rules for keys and values)."""

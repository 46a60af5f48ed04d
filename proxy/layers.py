"""Route-rule policies compiled once per snapshot: faults, retries, mirroring, header edits.

Each object is attached to a `Decision` only when its rule declares it, so an unconfigured
policy costs nothing per request (the exchange tests one attribute for None).
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING, Any

from proxy.policy.backoff import Backoff

if TYPE_CHECKING:
    from meshctl.api.rules import Fault, HeaderEdits, Retries
    from proxy.destinations import DestinationState
    from proxy.routing import Backend

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class FaultPolicy:
    """Delay and/or abort a share of the requests that match the rule."""

    __slots__ = ("abort_percent", "abort_status", "delay", "delay_percent", "rng")

    def __init__(self, fault: Fault, rng: random.Random) -> None:
        self.rng = rng
        self.delay = fault.delay.fixed_delay if fault.delay else 0.0
        self.delay_percent = fault.delay.percent if fault.delay else 0.0
        self.abort_status = fault.abort.http_status if fault.abort else 0
        self.abort_percent = fault.abort.percent if fault.abort else 0.0

    def roll_delay(self) -> float:
        if self.delay and self.rng.random() * 100.0 < self.delay_percent:
            return self.delay
        return 0.0

    def roll_abort(self) -> int:
        if self.abort_status and self.rng.random() * 100.0 < self.abort_percent:
            return self.abort_status
        return 0


class RetryPolicy:
    """When and how often to retry a failed attempt, within the destination's budget."""

    __slots__ = ("allow_non_idempotent", "attempts", "backoff", "codes", "on_5xx",
                 "on_connect_failure", "on_gateway", "on_reset", "per_try_timeout", "state")

    def __init__(self, retries: Retries, state: DestinationState, rng: random.Random) -> None:
        self.attempts = retries.attempts
        self.per_try_timeout = retries.per_try_timeout
        on = set(retries.retry_on)
        self.on_5xx = "5xx" in on
        self.on_gateway = "gateway-error" in on
        self.on_reset = "reset" in on
        self.on_connect_failure = "connect-failure" in on
        self.codes = frozenset(retries.retriable_status_codes)
        self.backoff = Backoff(retries.backoff.base_interval, retries.backoff.max_interval, rng)
        self.allow_non_idempotent = retries.allow_non_idempotent
        self.state = state

    def retriable_status(self, status: int) -> bool:
        if status in self.codes:
            return True
        if status >= 500 and self.on_5xx:
            return True
        return status in (502, 503, 504) and self.on_gateway

    def retriable_failure(self, kind: str) -> bool:
        """kind: connect-failure | reset | timeout (a per-try timeout)."""
        if kind == "connect-failure":
            return self.on_connect_failure or self.on_5xx or self.on_gateway
        if kind == "reset":
            return self.on_reset or self.on_5xx
        return self.on_5xx or self.on_gateway or self.on_reset  # per-try timeout, as Envoy


class MirrorPolicy:
    """Copy a share of requests to another backend; the copy's outcome is ignored."""

    __slots__ = ("backend", "percent", "rng")

    def __init__(self, backend: Backend, percent: float, rng: random.Random) -> None:
        self.backend = backend
        self.percent = percent
        self.rng = rng

    def roll(self) -> bool:
        return self.rng.random() * 100.0 < self.percent


class HeaderEditor:
    """Set / add / remove headers on a list of (name, value) pairs or serialized lines."""

    __slots__ = ("add", "remove", "set")

    def __init__(self, edits: HeaderEdits) -> None:
        self.set = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in edits.set)
        self.add = tuple((k.encode("latin-1"), v.encode("latin-1")) for k, v in edits.add)
        self.remove = frozenset(k.lower().encode("latin-1") for k in edits.remove) | frozenset(
            k.lower() for k, _ in self.set)

    @classmethod
    def build(cls, edits: HeaderEdits) -> HeaderEditor | None:
        if not (edits.set or edits.add or edits.remove):
            return None
        return cls(edits)

    def edit_pairs(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        out = [(n, v) for n, v in headers if n.lower() not in self.remove] if self.remove \
            else list(headers)
        out.extend(self.set)
        out.extend(self.add)
        return out

    def apply(self, lines: list[bytes]) -> list[bytes]:
        """Edit serialized response header lines (`name: value\\r\\n`); the status line stays."""
        out = [lines[0]]
        for line in lines[1:]:
            if line.split(b":", 1)[0].strip().lower() not in self.remove:
                out.append(line)
        out.extend(n + b": " + v + b"\r\n" for n, v in (*self.set, *self.add))
        return out


def retry_after_header(seconds: float) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"retry-after", str(max(1, math.ceil(seconds))).encode()),)


def attach(decision: Any, rule: Any, state: DestinationState | None, rng: random.Random,
           mirror_backend: Backend | None) -> None:
    """Compile the declared policies of `rule` onto `decision`."""
    decision.timeout = rule.timeout
    if rule.fault is not None:
        decision.fault = FaultPolicy(rule.fault, rng)
    if rule.retries is not None and rule.retries.attempts > 0 and state is not None:
        decision.retry = RetryPolicy(rule.retries, state, rng)
    if rule.mirror is not None and mirror_backend is not None:
        decision.mirror = MirrorPolicy(mirror_backend, rule.mirror.percent, rng)
    decision.request_headers = HeaderEditor.build(rule.headers.request)
    decision.response_header_ops = HeaderEditor.build(rule.headers.response)

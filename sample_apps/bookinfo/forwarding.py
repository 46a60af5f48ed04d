"""Which incoming headers an app copies onto its outbound calls (tracing and identity)."""

from __future__ import annotations

from collections.abc import Mapping

FORWARDED_HEADERS = (
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "end-user",
    "user-agent",
    "cookie",
    "authorization",
)


def forwarded_headers(incoming: Mapping[str, str], end_user: str | None = None) -> dict[str, str]:
    """Copy the propagated headers; a signed-in user replaces any incoming `end-user`."""
    headers = {name: incoming[name] for name in FORWARDED_HEADERS if name in incoming}
    if end_user:
        headers["end-user"] = end_user
    return headers

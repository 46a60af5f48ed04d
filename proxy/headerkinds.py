"""Header kinds looked up by the name as received: one dict lookup, no `.lower()` per header."""

from __future__ import annotations

from collections.abc import Iterable

# Forwarded names clients and servers commonly send, so that they too skip `.lower()`.
COMMON_REQUEST = (
    b"user-agent", b"accept", b"accept-encoding", b"accept-language", b"content-type",
    b"content-length", b"authorization", b"cookie", b"origin", b"referer", b"cache-control",
    b"if-none-match", b"if-modified-since", b"traceparent", b"tracestate", b"x-b3-traceid",
    b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"grpc-timeout",
)
COMMON_RESPONSE = (
    b"server", b"date", b"content-type", b"cache-control", b"etag", b"last-modified",
    b"vary", b"set-cookie", b"location", b"expires", b"accept-ranges", b"content-encoding",
    b"x-content-type-options", b"access-control-allow-origin", b"grpc-status",
)


def by_spelling(kinds: dict[bytes, int], common: Iterable[bytes], other: int) -> dict[bytes, int]:
    """`kinds` (keyed by lower-case names) keyed by the usual spellings of its names and of
    `common` (`host`, `Host`, `HOST`), each mapped to the kind its lower-case form has, or
    `other`. A name missing from the result is looked up lower-cased in `kinds`, as before:
    this table only saves the `.lower()` (~700 instructions) for the spellings it holds."""
    table: dict[bytes, int] = {}
    for name in (*kinds, *common):
        kind = kinds.get(name.lower(), other)
        for spelling in (name, name.lower(), name.title(), name.upper()):
            table[spelling] = kind
    return table

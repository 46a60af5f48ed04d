"""One HTTP access log line: the JSON object ``json.dumps`` would make, at a third of its cost.

``json.dumps`` with non-default separators builds a new encoder per call and walks a dict
built per request; here the keys are fixed text and each value goes through the same C
string escaper ``json`` uses (``ensure_ascii``), so the line is byte for byte what
``json.dumps(dict(zip(FIELDS, values)), separators=(",", ":"))`` gives (a property test holds
it to that). The keys and their order are the documented ones (docs/proxy.md, Access log).
"""

from __future__ import annotations

import time
from json.encoder import encode_basestring_ascii as _quote

FIELDS = ("start_time", "listener", "method", "path", "authority", "status", "reason",
          "duration_ms", "bytes_received", "bytes_sent", "request_id", "source",
          "destination_service", "upstream", "protocol", "grpc_status", "client_address")

# Numbers by %r and %d (json writes a float as its repr), strings quoted and escaped by _quote.
_LINE = ('{"start_time":"%s","listener":%s,"method":%s,"path":%s,"authority":%s,"status":%d,'
         '"reason":%s,"duration_ms":%r,"bytes_received":%d,"bytes_sent":%d,"request_id":%s,'
         '"source":%s,"destination_service":%s,"upstream":%s,"protocol":%s,"grpc_status":%s,'
         '"client_address":%s}\n')


# The last whole second formatted, and its text: the lines of one second format only their
# milliseconds (strftime per line would be most of a line's cost).
_second = -1
_second_text = ""
_MILLIS = tuple(f".{n:03d}Z" for n in range(1000))


def wall_clock(start: float) -> float:
    """A time on the monotonic clock (``time.monotonic()``, the loop's) as the wall-clock
    time it was, in seconds since the epoch."""
    return time.time() - time.monotonic() + start


def wall_start(start: float) -> str:
    """A start on the monotonic clock (``time.monotonic()``, the loop's) as the wall-clock
    time it was, in RFC 3339 UTC with milliseconds (``2026-11-29T11:50:00.123Z``), as
    Envoy's ``%START_TIME%``: what log pipelines parse and join with other logs."""
    global _second, _second_text
    # (wall_clock's sum, inline: this runs for every logged request)
    stamp = int((time.time() - time.monotonic() + start) * 1000.0 + 0.5)  # ms, rounded
    second = stamp // 1000
    if second != _second:
        _second, _second_text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
    return _second_text + _MILLIS[stamp - second * 1000]


def access_line(start_time: str, listener: str, method: str | None, path: str | None,
                 authority: str | None, status: int, reason: str, duration_ms: float,
                 bytes_received: int, bytes_sent: int, request_id: str | None, source: str,
                 destination: str, upstream: str | None, protocol: str | None,
                 grpc_status: str | None, client_address: str | None) -> str:
    """The line, newline included; ``start_time`` is `wall_start`'s text; a ``None`` is JSON
    ``null`` (a request refused before its head was understood has no method, path or id;
    one answered locally has no upstream)."""
    return _LINE % (
        start_time, _quote(listener),
        "null" if method is None else _quote(method),
        "null" if path is None else _quote(path),
        "null" if authority is None else _quote(authority),
        status, _quote(reason), duration_ms, bytes_received, bytes_sent,
        "null" if request_id is None else _quote(request_id),
        _quote(source), _quote(destination),
        "null" if upstream is None else _quote(upstream),
        "null" if protocol is None else _quote(protocol),
        "null" if grpc_status is None else _quote(grpc_status),
        "null" if client_address is None else _quote(client_address))

"""Short-lived connections for a soak: the traffic that leaks when per-connection state does.

Each connection carries one request of a rotating kind (see `KINDS`) and ends with the client
closing or the proxy answering `connection: close`. Unexpected outcomes are counted, not raised.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

_BODY = b"x" * 4096


@dataclass(frozen=True, slots=True)
class Kind:
    """One request shape and the status the proxy must answer it with (None: client aborts)."""

    name: str
    request: bytes
    status: int | None


def _get(host: str, target: str) -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def kinds(host: str) -> tuple[Kind, ...]:
    """The rotation: mostly good requests, plus a body, a miss, a smuggling attempt, an abort."""
    post = (f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(_BODY)}\r\n"
            "Connection: close\r\n\r\n").encode() + _BODY
    return (
        Kind("get", _get(host, "/"), 200),
        Kind("get-unique-path", _get(host, "/soak/{n}?i={n}"), 200),
        Kind("post-4k", post, 200),
        Kind("get-unique-path", _get(host, "/a/{n}/b"), 200),
        Kind("no-route", _get("no-such-service.invalid", "/"), 404),
        Kind("get", _get(host, "/"), 200),
        Kind("smuggling", (f"GET / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 1\r\n"
                           "Transfer-Encoding: chunked\r\n\r\n").encode(), 400),
        Kind("abort-mid-head", f"GET / HTTP/1.1\r\nHost: {host}\r\nX-Half: ".encode(), None),
    )


async def one(port: int, kind: Kind, n: int, timeout: float = 5.0) -> bool:
    """One request of `kind` on a new connection; True when the outcome was the expected one."""
    request = kind.request.replace(b"{n}", str(n).encode())
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(request)
        await writer.drain()
        if kind.status is None:
            return True  # closing now, mid-request, is the point
        reply = await asyncio.wait_for(reader.read(), timeout)  # until the proxy closes
        return reply.startswith(b"HTTP/1.1 %d " % kind.status)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


class Churn:
    """Opens `per_second` new connections each second, cycling through `kinds`."""

    def __init__(self, port: int, host: str, per_second: int) -> None:
        self._port = port
        self._kinds = kinds(host)
        self._per_second = per_second
        self.sent: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()

    async def run(self, seconds: float) -> None:
        """Keep the rate for `seconds` (each second's batch runs concurrently)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        n = 0
        while loop.time() < end:
            tick = loop.time() + 1.0
            batch = [self._kinds[(n + i) % len(self._kinds)] for i in range(self._per_second)]
            results = await asyncio.gather(*(one(self._port, k, n + i)
                                             for i, k in enumerate(batch)))
            for kind, ok in zip(batch, results, strict=True):
                self.sent[kind.name] += 1
                if not ok:
                    self.failed[kind.name] += 1
            n += len(batch)
            await asyncio.sleep(max(0.0, tick - loop.time()))

"""The proxy's per-request Python cost, in process: real protocols and router, no sockets.

`python -m bench.micro` drives a `DownstreamProtocol` and a pooled `UpstreamConnection` with
in-memory transports, so a request costs exactly the proxy's own Python work (parsing callbacks,
routing, policies, metrics, response framing) without syscalls or the scheduler. It is the
figure to compare two builds of the hot path with; `make bench` gives the end-to-end ones.
`--instructions` counts CPU instructions per request under valgrind instead of timing: slow,
but the same on every run, so it shows a 1% change that timing noise on a shared VM hides.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.amiconf import BENCH_SERVICE, FEATURE_RULES, NAMED_RULES

REQUEST = (b"GET /productpage?u=normal HTTP/1.1\r\nHost: " + BENCH_SERVICE.encode()
           + b"\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n")
_BODY = b"x" * 1024
# What an outbound sidecar sends the inbound one over mTLS (the `mtls` variant's request).
MESH_REQUEST = (b"GET /productpage?u=normal HTTP/1.1\r\nHost: " + BENCH_SERVICE.encode()
                + b"\r\nUser-Agent: wrk\r\nAccept: */*\r\nx-forwarded-for: 127.0.0.1\r\n"
                  b"x-forwarded-proto: http\r\n"
                  b"x-request-id: cca76e9e-07ee-4d23-8a01-27efec66f303\r\n"
                  b"x-ami-peer: bench-client;v1\r\n\r\n")
PEER_ID = "spiffe://cluster.local/ns/default/sa/bench-client"
# The `authz` variant (`mtls` with policies): a DENY the request does not match, an ALLOW
# admitting its caller; each request is judged by both, and counted under the ALLOW.
AUTHZ_POLICIES = [
    {"action": "DENY", "rules": [{"when": [{"header": "x-user", "values": ["mallory"]}]}]},
    {"action": "ALLOW", "rules": [{"from": [{"services": ["bench-client"]}]}]},
]
# `authzdry`: `authz` and a dry-run DENY the request does not match, judged on each request
AUTHZ_DRY_POLICIES = [*AUTHZ_POLICIES, {"name": "dry", "dryRun": True, "action": "DENY",
                                        "rules": [{"to": [{"paths": ["/admin/*"]}]}]}]
# The `cookie` variant: a browser's request after its first, carrying the cookie that names
# the endpoint (proxy.policy.sticky.endpoint_token("127.0.0.1:9")) among a few of the app's.
COOKIE_REQUEST = REQUEST[:-2] + (b"Cookie: theme=dark; sticky=e532dac709ce1c1a; "
                                 b"lang=en\r\n\r\n")
COOKIE_POLICY = {"loadBalancer": "CONSISTENT_HASH",
                 "consistentHash": {"httpCookie": {"name": "sticky", "path": "/", "ttl": "1h"}}}
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Fri, 27 Nov 2026 03:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 1024\r\nConnection: keep-alive\r\n\r\n"
            + _BODY)


class MemoryTransport:
    """Just enough of a uvloop transport for the protocols: writes are counted, not sent."""

    def __init__(self) -> None:
        self.written = 0
        self.first = b""  # the start of the first write (a response head, for the check)
        self.closed = False

    def write(self, data: bytes) -> None:
        if not self.written:
            self.first = bytes(data[:16])
        self.written += len(data)

    def writelines(self, parts: Any) -> None:
        for part in parts:
            self.write(part)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    abort = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading


def _snapshot(variant: str) -> dict[str, Any]:
    node = {"service": "bench-client", "namespace": "default", "labels": {"version": "v1"}}
    mesh = {"mtls": "DISABLE", "accessLog": variant == "logged"}
    services: dict[str, Any] = {BENCH_SERVICE: {"endpoints": [{"address": "127.0.0.1:9"}]}}
    if variant == "cookie":
        services[BENCH_SERVICE]["policy"] = COOKIE_POLICY
    if variant in ("inbound", "mtls", "authz", "authzdry"):
        inbound = {"version": "micro", "node": {**node, "service": BENCH_SERVICE},
                   "mesh": mesh, "listeners": {"inbound": "127.0.0.1:0"}, "app": "127.0.0.1:9"}
        if variant in ("authz", "authzdry"):
            inbound["inbound"] = {"authorization": AUTHZ_POLICIES if variant == "authz"
                                  else AUTHZ_DRY_POLICIES}
        return inbound
    snap: dict[str, Any] = {"version": "micro", "node": node, "mesh": mesh,
                            "listeners": {"outbound": "127.0.0.1:0"}, "services": services}
    if variant in ("features", "named"):
        rules = FEATURE_RULES if variant == "features" else NAMED_RULES
        snap["routes"] = [{"host": BENCH_SERVICE, "rules": rules}]
    return snap


@dataclass
class Result:
    variant: str
    requests: int
    us_per_request: float  # best of the repeats


@dataclass
class HotPath:
    """One HTTP/1.1 variant's proxy, in process: a client connection and a pooled upstream
    connection on in-memory transports; ``cycle`` sends one request and its response."""
    server: Any
    listener: Any
    client: Any
    client_transport: MemoryTransport
    upstream: Any
    cycle: Callable[[], None]


async def hot_path(variant: str) -> HotPath:
    """The proxy of an HTTP/1.1 ``variant``, its first request answered 200 (else an error)."""
    from proxy.config import Snapshot
    from proxy.downstream import DownstreamProtocol
    from proxy.server import ProxyOptions, ProxyServer
    from proxy.upstream import UpstreamConnection

    server = ProxyServer(ProxyOptions())
    if variant == "logged":  # the lines formatted and batched as ever, the writes discarded
        from proxy.accesslog import AccessLogSink

        server.access_log = AccessLogSink(_Discard())  # type: ignore[arg-type]
    server.apply(Snapshot.from_dict(_snapshot(variant)))
    await server.start_listeners()
    kind = "inbound" if variant in ("inbound", "mtls", "authz", "authzdry") else "outbound"
    listener = server.listeners[kind]
    client = DownstreamProtocol(listener)
    client_transport = MemoryTransport()
    client.connection_made(client_transport)  # type: ignore[arg-type]
    request = COOKIE_REQUEST if variant == "cookie" else REQUEST
    if variant in ("mtls", "authz", "authzdry"):
        _as_mtls_peer(client, listener)
        request = MESH_REQUEST
    (pool,) = list(server.pools)
    upstream = UpstreamConnection(pool)
    upstream.connection_made(MemoryTransport())  # type: ignore[arg-type]
    pool.connections += 1
    pool.release(upstream)

    def cycle() -> None:
        client.data_received(request)
        upstream.data_received(RESPONSE)

    cycle()
    if not client_transport.first.startswith(b"HTTP/1.1 200 ") or upstream.exchange is not None \
            or client_transport.written < len(_BODY):
        raise RuntimeError(f"{variant}: no 200 through the proxy: {client_transport.first!r}")
    return HotPath(server, listener, client, client_transport, upstream, cycle)


async def measure(variant: str, requests: int, repeats: int) -> Result:
    """Run `requests` request/response cycles `repeats` times; the best run counts."""
    if variant.startswith("h2"):
        from bench.microh2 import measure as measure_h2

        return await measure_h2(variant, requests, repeats)
    path = await hot_path(variant)
    server, listener, client, cycle = path.server, path.listener, path.client, path.cycle
    best = float("inf")
    gc.collect()
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(requests):
            cycle()
        best = min(best, time.perf_counter() - t0)
    if client.closed or listener.stats is None:
        raise RuntimeError(f"{variant}: the client connection closed during the run")
    if variant == "mtls" and not any(
            labels[:3] == ("destination", "bench-client", "v1") and labels[-2] == "mutual_tls"
            and s.count for labels, s in listener.stats.series()):
        raise RuntimeError("mtls: the requests were not counted as the mTLS peer's")
    if variant in ("authz", "authzdry"):  # each request admitted by the ALLOW, counted so
        counts = {key[1:]: c.n for key, c in listener.stats.authz.counts.items()}
        if counts.get(("inbound.authorization[1]", "ALLOW", "allow", "false"), 0) < requests:
            raise RuntimeError(f"{variant}: the requests were not counted under the ALLOW")
    counted = any(listener.stats.rules.rules.values())  # ami_route_* (named rules only)
    if counted != (variant == "named"):
        raise RuntimeError(f"{variant}: per-rule metrics counted: {counted}")
    for lst in server.listeners.values():
        if lst.server is not None:
            lst.server.close()
    return Result(variant, requests, best / requests * 1e6)


class _Discard:
    """A stream that takes every batch and keeps nothing (the `logged` variant's stdout)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def _as_mtls_peer(client: Any, listener: Any) -> None:
    """The connection as an mTLS handshake leaves it (DownstreamProtocol._identify_peer, from
    a verified certificate): a peer identity, its service and namespace, and the XFCC line."""
    listener.xfcc_by = b"spiffe://cluster.local/ns/default/sa/" + BENCH_SERVICE.encode()

    class _Peer:
        def getpeercert(self, binary_form: bool = False) -> bytes:
            return b"der"

    from proxy import tls

    def verified_peer(ssl_object: Any) -> tuple[str, bool]:  # what a verified handshake gives
        return PEER_ID, False

    real, tls.verified_peer = tls.verified_peer, verified_peer
    try:
        if not client._identify_peer(_Peer()):
            raise RuntimeError("mtls: the peer identity was refused")
    finally:
        tls.verified_peer = real


_REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions_per_request(variant: str, small: int = 1000, large: int = 6000) -> float:
    """Instructions per request: two callgrind runs, the difference divided by the extra
    requests (start-up and imports cancel out). An HTTP/2 request costs ten times more: 2,000
    of them against 1,000 are as exact, in a sixth of the time."""
    if variant.startswith("h2"):
        large = 2 * small
    def refs(requests: int) -> int:
        proc = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
             "-m", "bench.micro", "--variants", variant, "--requests", str(requests),
             "--repeats", "1"], capture_output=True, text=True, check=True,
            # One string-hash seed: set and dict layouts, and so the count, repeat exactly.
            env={**os.environ, "PYTHONHASHSEED": "0"})
        return parse_refs(proc.stderr)

    return (refs(large) - refs(small)) / (large - small)


def parse_refs(valgrind_stderr: str) -> int:
    """The `I refs:` total from valgrind's summary."""
    match = _REFS.search(valgrind_stderr)
    if match is None:
        raise RuntimeError("no 'I refs' line in valgrind's output")
    return int(match.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.micro", description=__doc__)
    parser.add_argument("--variants", default="plain,features,inbound",
                        help="plain (one-hop route by Host), features (route match, timeout, "
                             "retries), inbound (server side); also: named (features with "
                             "the rule named, so counted per rule too); logged (plain "
                             "with the access log on, its writes discarded); mtls (inbound "
                             "from an mTLS peer: identity, XFCC, peer metrics labels); authz "
                             "(mtls with an ALLOW and a DENY AuthorizationPolicy); authzdry "
                             "(authz and a dry-run DENY); "
                             "cookie (plain to a consistentHash.httpCookie destination, the "
                             "request carrying its cookie); h2 "
                             "(plain over HTTP/2: h2c client, HTTP/2 upstream, bench.microh2)")
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--instructions", action="store_true",
                        help="count instructions per request with valgrind (~1 min per variant)")
    args = parser.parse_args(argv)
    if args.instructions:
        if shutil.which("valgrind") is None:
            print("--instructions needs valgrind (apt-get install valgrind)", file=sys.stderr)
            return 2
        for variant in args.variants.split(","):
            print(f"{variant:10} {instructions_per_request(variant):9,.0f} instructions/request")
        return 0
    import uvloop

    results = [uvloop.run(measure(v, args.requests, args.repeats))
               for v in args.variants.split(",")]
    if args.json:
        print(json.dumps([r.__dict__ for r in results]))
    else:
        for r in results:
            print(f"{r.variant:10} {r.us_per_request:6.2f} µs/request (best of {args.repeats})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Weight changes applied to a running in-process ProxyServer while requests are in flight."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import aiohttp

from proxy.config import Address, Snapshot
from proxy.server import ProxyOptions, ProxyServer
from tests.proxyharness import Backends
from tests.traffic_backends import TrafficBackend, close_backends, endpoints, start_backend


def _snapshot(version: int, backends: list[TrafficBackend], w1: int, w2: int) -> Snapshot:
    subsets = [{"name": v, "labels": {"version": v}} for v in ("v1", "v2")]
    return Snapshot.from_dict({
        "version": f"shift-{version}",
        "node": {"service": "client"},
        "services": {"reviews": {"endpoints": endpoints(*backends), "subsets": subsets}},
        "routes": [{"host": "reviews", "rules": [{"backends": [
            {"subset": "v1", "weight": w1}, {"subset": "v2", "weight": w2}]}]}],
    })


async def test_weight_changes_never_fail_in_flight_requests() -> None:
    """Shifting 100/0 -> 50/50 -> 0/100 under concurrent load fails no request and takes effect."""
    hub = Backends()
    backends = [start_backend(hub, version="v1", delay=0.03),
                start_backend(hub, version="v2", delay=0.03)]
    server = ProxyServer(ProxyOptions(listeners={"outbound": Address("127.0.0.1", 0)}))
    try:
        server.apply(_snapshot(1, backends, 100, 0))
        await server.start_listeners()
        url = f"http://127.0.0.1:{server.bound_address('outbound').port}/r"
        # (status, version, phase when sent, phase when answered)
        results: list[tuple[int, str, int, int]] = []
        phase = 0

        async def worker(session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
            while not stop.is_set():
                sent_in = phase
                async with session.get(url, headers={"Host": "reviews"}) as resp:
                    await resp.read()
                    results.append((resp.status, resp.headers.get("x-version", "?"), sent_in,
                                    phase))

        async with aiohttp.ClientSession() as session:
            stop = asyncio.Event()
            workers = [asyncio.create_task(worker(session, stop)) for _ in range(8)]
            for phase_no, (w1, w2) in enumerate(((50, 50), (0, 100)), start=1):
                await _until_count(results, 80 * phase_no)
                await _until(lambda: sum(b.active for b in backends) > 0)  # lands mid-flight
                phase = phase_no
                server.apply(_snapshot(phase_no + 1, backends, w1, w2))
            await _until_count(results, 240)
            stop.set()
            await asyncio.gather(*workers)
        assert {r[0] for r in results} == {200}
        # Answered before the first change: routed by 100/0. Sent after the last: by 0/100.
        assert {v for _, v, _, done in results if done == 0} == {"v1"}
        assert {v for _, v, sent, _ in results if sent == 2} == {"v2"}
        middle = Counter(v for _, v, sent, done in results if sent == done == 1)
        assert middle["v1"] > 10 and middle["v2"] > 10, middle
        metrics = server.stats.totals()
        assert metrics["requests"] == len(results) and metrics["errors_5xx"] == 0
    finally:
        await server.shutdown(deadline=1.0)
        close_backends(hub, backends)


async def _until(condition: Any, deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while not condition():
        assert loop.time() < end, "condition not met before the deadline"
        await asyncio.sleep(0)  # let the event loop run the requests in flight


async def _until_count(results: list[Any], count: int, deadline: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    while len(results) < count:
        assert loop.time() < end, "load did not progress before the deadline"
        await asyncio.sleep(0.01)  # polling interval of a deadline-bounded wait


async def test_config_push_keeps_websockets_and_keepalive_connections() -> None:
    """A push that changes the route keeps an open WebSocket and the client's keep-alive alive."""
    from tests.proxyharness import echo_app

    hub = Backends()
    port = hub.aiohttp(echo_app())
    backend = [{"address": f"127.0.0.1:{port}", "labels": {"version": "v1"}}]

    def snapshot(version: int, timeout: str) -> Snapshot:
        return Snapshot.from_dict({
            "version": f"ws-{version}", "node": {"service": "client"},
            "services": {"echo": {"endpoints": backend}},
            "routes": [{"host": "echo", "rules": [{"backends": [{"weight": 100}],
                                                   "timeout": timeout}]}],
        })

    server = ProxyServer(ProxyOptions(listeners={"outbound": Address("127.0.0.1", 0)}))
    try:
        server.apply(snapshot(1, "5s"))
        await server.start_listeners()
        base = f"http://127.0.0.1:{server.bound_address('outbound').port}"
        async with aiohttp.ClientSession(headers={"Host": "echo"}) as session:
            async with session.ws_connect(base + "/ws") as ws:
                assert await ws.receive_str(timeout=5) == "hello from backend"
                await ws.send_str("before")
                assert await ws.receive_str(timeout=5) == "echo:before"
                async with session.get(base + "/a") as resp:
                    assert resp.status == 200
                server.apply(snapshot(2, "7s"))  # a real change: new routers, same pools
                await ws.send_str("after")
                assert await ws.receive_str(timeout=5) == "echo:after"
                async with session.get(base + "/b") as resp:
                    assert resp.status == 200
            assert server.stats.connections_total["outbound"] == 2  # ws + one keep-alive
    finally:
        await server.shutdown(deadline=1.0)
        hub.close()


async def test_connection_to_an_endpoint_removed_mid_request_closes_when_it_ends() -> None:
    """An endpoint leaves the config while a request to it is in flight: the request completes,
    then its connection is closed instead of idling for ever in a pool nobody sweeps."""
    hub = Backends()
    leaving, staying = start_backend(hub, delay=0.5), start_backend(hub, version="v2")

    def snapshot(version: int, *backends: TrafficBackend) -> Snapshot:
        return Snapshot.from_dict({"version": f"rm-{version}", "node": {"service": "client"},
                                   "services": {"svc": {"endpoints": endpoints(*backends)}}})

    server = ProxyServer(ProxyOptions(listeners={"outbound": Address("127.0.0.1", 0)}))
    try:
        server.apply(snapshot(1, leaving))
        await server.start_listeners()
        url = f"http://127.0.0.1:{server.bound_address('outbound').port}/slow"
        async with aiohttp.ClientSession(headers={"Host": "svc"}) as session:
            request = asyncio.create_task(session.get(url))
            loop = asyncio.get_running_loop()
            end = loop.time() + 5
            while not leaving.active:  # the request has reached the leaving endpoint
                assert loop.time() < end
                await asyncio.sleep(0.01)  # polling interval of a deadline-bounded wait
            server.apply(snapshot(2, staying))
            async with await request as resp:
                assert resp.status == 200 and resp.headers["x-version"] == "v1"
            while leaving.writers:  # well before any idle timeout (10 s)
                assert loop.time() < end, "the removed endpoint's connection stayed open"
                await asyncio.sleep(0.01)  # polling interval of a deadline-bounded wait
            async with session.get(url) as resp:
                assert resp.headers["x-version"] == "v2"
    finally:
        await server.shutdown(deadline=1.0)
        close_backends(hub, [leaving, staying])

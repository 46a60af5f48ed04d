"""A subset's own policy declared as a resource reaches real sidecars through the control
plane (mTLS on): the canary's own circuit breaker trips while the stable subset serves."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from tests.helpers_mesh import MeshProcess, http_get, wait_for
from tests.meshbuilder import Mesh
from tests.proxyharness import Backends, eventually, metric_value
from tests.resources import destination_policy, documents, header_rule, route
from tests.traffic_backends import TrafficBackend, close_backends, start_backend

pytestmark = pytest.mark.timeout(180)

# v2 has a connection pool of its own: one connection, no queue.
RESOURCES = documents(
    destination_policy("reviews", ("v1", {"name": "v2", "connectionPool": {
        "maxConnections": 1, "maxPendingRequests": 0}}),
        connectionPool={"maxConnections": 10, "maxPendingRequests": 100}),
    route("reviews", rules=[header_rule("v2", "1", header="x-canary"),
                            {"backends": [{"subset": "v1"}]}]))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    hub = Backends()
    gate = hub.call(_event())
    apps = {"v1": start_backend(hub, version="v1"),
            "v2": start_backend(hub, version="v2", gate=gate)}  # holds requests until told
    with Mesh(tmp_path_factory.mktemp("subset-policy-cp")) as mesh:
        mesh.defer(lambda: close_backends(hub, apps.values()))
        mesh.control_plane(RESOURCES, warmup=0.0)
        for version, app in apps.items():
            mesh.sidecar("reviews", version, app=app.address)
        client = mesh.sidecar("productpage")
        mesh.wait_synced()
        wait_for(lambda: mesh.get(client, "reviews")[0] == 200, 20,
                 "reviews v1 reachable over mTLS")
        yield {"client": client, "hub": hub, "gate": gate, **apps}
        hub.loop.call_soon_threadsafe(gate.set)  # no request held while the sidecars stop


async def _event() -> asyncio.Event:
    return asyncio.Event()


async def _call(session: aiohttp.ClientSession, client: MeshProcess,
                **headers: str) -> tuple[int, str | None, str | None]:
    """(status, x-ami-reason, x-version) of one request for reviews through the client."""
    async with session.get(f"http://{client.info['outbound']}/",
                           headers={"Host": "reviews", **headers},
                           timeout=aiohttp.ClientTimeout(total=20)) as resp:
        await resp.read()
        return resp.status, resp.headers.get("x-ami-reason"), resp.headers.get("x-version")


async def test_the_canary_trips_its_own_breaker_and_the_stable_subset_serves(
        mesh: dict[str, Any]) -> None:
    """With v2's one connection busy, 5 more canary requests get 503 `overflow` at once
    (maxPendingRequests 0) while requests to v1, under the service's limits, are served."""
    client: MeshProcess = mesh["client"]
    v2: TrafficBackend = mesh["v2"]
    async with aiohttp.ClientSession() as session:
        held = asyncio.create_task(_call(session, client, **{"x-canary": "1"}))
        try:
            await eventually(lambda: v2.active == 1, 10)
            canary = [await _call(session, client, **{"x-canary": "1"}) for _ in range(5)]
            stable = await asyncio.gather(*(_call(session, client) for _ in range(5)))
        finally:
            mesh["hub"].loop.call_soon_threadsafe(mesh["gate"].set)
        assert await held == (200, None, "v2")
    assert canary == [(503, "overflow", None)] * 5
    assert Counter(stable) == {(200, None, "v1"): 5}
    _, text = http_get(f"http://{client.info['admin']}/metrics")
    metrics = text.decode()
    assert metric_value(metrics, "ami_circuit_breaker_overflow_total",
                        destination_service="reviews") == 5
    assert metric_value(metrics, "ami_requests_total", destination_service="reviews",
                        destination_version="v2", response_flags="overflow") == 5
    assert len(v2.requests) == 1  # the overflowed ones never left the client's sidecar

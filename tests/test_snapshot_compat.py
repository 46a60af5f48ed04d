"""A real proxy talking to a fake newer control plane: it registers with its version, ignores
what it does not know in the wire message and in the snapshot's own mappings, and NACKs a
field it does not know inside a rule or policy (docs/operations.md, Restarts and upgrades)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.api.build import BUILD, VERSION
from meshctl.controlplane.xds import start_grpc_server
from tests.helpers_mesh import MeshProcess, http_get, start_sidecar
from tests.ports import free_port

pytestmark = pytest.mark.timeout(120)
SERVICES = {"ratings": {"endpoints": [{"address": "127.0.0.1:9", "labels": {"version": "v1"}}]}}
ROUTES = [{"host": "ratings", "rules": [{"backends": [{"service": "ratings"}]}]}]


class NewerControlPlane(mesh_pb2_grpc.MeshControlServicer):
    """One stream: records the Register, pushes what the test queues, hands back the answers."""

    def __init__(self) -> None:
        self.registers: asyncio.Queue[mesh_pb2.Register] = asyncio.Queue()
        self.pushes: asyncio.Queue[mesh_pb2.ConfigMessage] = asyncio.Queue()
        self.answers: asyncio.Queue[mesh_pb2.ProxyMessage] = asyncio.Queue()

    async def StreamConfig(self, request_iterator: Any, context: Any) -> Any:
        first = await request_iterator.__anext__()
        await self.registers.put(first.register)

        async def read() -> None:
            async for message in request_iterator:
                if message.WhichOneof("kind") in ("ack", "nack"):
                    await self.answers.put(message)

        reader = asyncio.create_task(read())
        try:
            while True:  # until the proxy half-closes its side (it stops)
                take = asyncio.ensure_future(self.pushes.get())
                await asyncio.wait({take, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not take.done():
                    take.cancel()
                    return
                yield take.result()
        finally:
            reader.cancel()

    async def push(self, version: str, snapshot: dict[str, Any],
                   unknown_wire_field: bool = False) -> mesh_pb2.ProxyMessage:
        """Push ``snapshot``; the proxy's ACK or NACK of it."""
        message = mesh_pb2.ConfigMessage(version=version, nonce=version,
                                         snapshot_json=json.dumps(snapshot).encode())
        if unknown_wire_field:  # field 15, a string, as a newer ConfigMessage could carry
            message.MergeFromString(b"\x7a\x05later")
            assert b"later" in message.SerializeToString()
        await self.pushes.put(message)
        return await asyncio.wait_for(self.answers.get(), 20)


@pytest.fixture
async def wired(tmp_path: Path) -> AsyncIterator[tuple[NewerControlPlane, MeshProcess]]:
    control = NewerControlPlane()
    server, port = await start_grpc_server(control, f"127.0.0.1:{free_port()}")
    proxy = await asyncio.to_thread(start_sidecar, tmp_path, f"127.0.0.1:{port}", "reviews",
                                    "v1", wait_ready=False)
    try:
        yield control, proxy
    finally:
        # This fake serves no certificate: SIGTERM ends the proxy's wait for one
        # (tests/test_proxy_startup_stop.py).
        await asyncio.to_thread(proxy.stop)
        await server.stop(None)


def config_version(proxy: MeshProcess) -> str:
    status, body = http_get(f"http://{proxy.info['admin']}/stats")
    assert status == 200, body
    return str(json.loads(body)["config_version"])


async def test_the_proxy_registers_with_its_version(
        wired: tuple[NewerControlPlane, MeshProcess]) -> None:
    """Register carries proxy_version (this build's) and build (its Python)."""
    control, _ = wired
    register = await asyncio.wait_for(control.registers.get(), 20)
    assert (register.proxy_version, register.build) == (VERSION, BUILD)
    answer = await control.push("v1", {"services": SERVICES, "routes": ROUTES})
    assert answer.WhichOneof("kind") == "ack", answer  # (started: it stops at once)


async def test_unknown_keys_are_ignored_where_the_snapshot_parser_reads_them(
        wired: tuple[NewerControlPlane, MeshProcess]) -> None:
    """A newer control plane's keys at the top, in node, mesh (and its blocks), services,
    endpoints, subsets, routes, external hosts and their ports, gateway and inbound, and an
    unknown field of the ConfigMessage itself, are ignored: ACK."""
    control, proxy = wired
    await asyncio.wait_for(control.registers.get(), 20)
    snapshot = {
        "later": {"anything": 1}, "node": {"later": 1},
        "mesh": {"later": 1, "retryBudget": {"later": 1}, "tracing": {"later": 1},
                 "outboundTrafficPolicy": {"later": 1}},
        "services": {"ratings": {**SERVICES["ratings"], "later": 1, "subsets": [
            {"name": "v1", "labels": {"version": "v1"}, "later": 1}]}},
        "routes": [{**ROUTES[0], "later": 1}], "inbound": {"later": 1},
        "external": {"api.example.com": {"ports": [{"number": 80, "later": 1}], "later": 1}},
        "gateway": {"later": 1},
    }
    snapshot["services"]["ratings"]["endpoints"] = [
        {"address": "127.0.0.1:9", "labels": {"version": "v1"}, "later": 1}]
    answer = await control.push("v-newer", snapshot, unknown_wire_field=True)
    assert answer.WhichOneof("kind") == "ack", answer
    assert await asyncio.to_thread(config_version, proxy) == "v-newer"


@pytest.mark.parametrize(("where", "error"), [
    ({"routes": [{"host": "ratings", "rules": [{**ROUTES[0]["rules"][0], "later": 1}]}]},
     "routes[0].rules[0].later: unknown field"),
    ({"services": {"ratings": {**SERVICES["ratings"], "policy": {"later": 1}}}},
     "services.ratings.policy.later: unknown field"),
    ({"services": {"ratings": {**SERVICES["ratings"], "protocol": "later"}}},
     "services.ratings.protocol: expected http or tcp"),
])
async def test_an_unknown_field_in_a_rule_or_policy_or_a_new_value_is_nacked(
        wired: tuple[NewerControlPlane, MeshProcess], where: dict[str, Any],
        error: str) -> None:
    """Rules and policies are parsed by the resources' own parsers, which refuse unknown
    fields, and known fields take known values only: NACK, and the last good snapshot stays."""
    control, proxy = wired
    await asyncio.wait_for(control.registers.get(), 20)
    good = await control.push("v-good", {"services": SERVICES, "routes": ROUTES})
    assert good.WhichOneof("kind") == "ack", good
    answer = await control.push("v-later", {"services": SERVICES, "routes": ROUTES, **where})
    assert answer.WhichOneof("kind") == "nack" and error in answer.nack.error, answer
    assert await asyncio.to_thread(config_version, proxy) == "v-good"

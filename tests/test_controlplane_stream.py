"""Config stream protocol against the real gRPC server: register first, ACK/NACK bookkeeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc import aio

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.api.resources import load_documents
from meshctl.ca import BootstrapTokens
from meshctl.controlplane import xds
from meshctl.controlplane.memstore import MemStore
from meshctl.controlplane.proxystatus import proxies_json
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import Registry
from meshctl.controlplane.xds import MeshControlService, start_grpc_server

ROUTE = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews}
spec: {host: reviews, rules: [{backends: [{service: reviews}]}]}
"""


TOKENS = BootstrapTokens(b"stream-test-secret-0123456789")


def register(name: str = "reviews-v1-1", **fields: Any) -> mesh_pb2.ProxyMessage:
    base: dict[str, Any] = {"name": name, "service": "reviews", "inbound": "127.0.0.1:9001",
                            "token": TOKENS.token_for("default", "reviews"),
                            "labels": {"version": "v1"}}
    base.update(fields)
    return mesh_pb2.ProxyMessage(register=mesh_pb2.Register(**base))


class FakeProxy:
    """A client stream that checks every ConfigMessage it gets: new version, fresh nonce."""

    def __init__(self, stub: mesh_pb2_grpc.MeshControlStub) -> None:
        self.outbox: asyncio.Queue[mesh_pb2.ProxyMessage] = asyncio.Queue()
        self.call = stub.StreamConfig(self._send())
        self.versions: list[str] = []
        self.nonces: set[str] = set()

    async def _send(self) -> AsyncIterator[mesh_pb2.ProxyMessage]:
        while True:
            yield await self.outbox.get()

    async def receive(self, timeout: float = 5.0) -> mesh_pb2.ConfigMessage:
        msg = await asyncio.wait_for(self.call.read(), timeout)
        assert msg is not aio.EOF
        assert msg.nonce not in self.nonces, "nonce reused"
        assert not self.versions or msg.version != self.versions[-1], "pushed an unchanged version"
        self.nonces.add(msg.nonce)
        self.versions.append(msg.version)
        return msg

    def answer(self, msg: mesh_pb2.ConfigMessage, error: str | None = None) -> None:
        if error is None:
            self.outbox.put_nowait(mesh_pb2.ProxyMessage(
                ack=mesh_pb2.Ack(version=msg.version, nonce=msg.nonce)))
        else:
            self.outbox.put_nowait(mesh_pb2.ProxyMessage(
                nack=mesh_pb2.Nack(version=msg.version, nonce=msg.nonce, error=error)))


@dataclass
class Plane:
    store: MemStore
    registry: Registry
    reconciler: Reconciler
    stub: mesh_pb2_grpc.MeshControlStub

    async def until(self, check: object, what: str) -> None:
        """Wait on reconciler progress events (not sleeps) until ``check()`` holds."""
        async def loop() -> None:
            while not check():  # type: ignore[operator]
                await self.reconciler._progress.wait()
        try:
            await asyncio.wait_for(loop(), 5.0)
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
async def plane() -> AsyncIterator[Plane]:
    store = MemStore()
    registry = Registry(grace=0.0)
    reconciler = Reconciler(store, registry, quiet=0.0, cap=0.0)
    server, port = await start_grpc_server(
        MeshControlService(registry, reconciler, token_kind=TOKENS.kind), "127.0.0.1:0")
    task = asyncio.create_task(reconciler.run())
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Plane(store, registry, reconciler, mesh_pb2_grpc.MeshControlStub(channel))
    finally:
        await channel.close()
        await server.stop(None)
        task.cancel()


async def test_first_message_must_be_register(plane: Plane) -> None:
    """A stream that starts with anything but Register ends with INVALID_ARGUMENT."""
    proxy = FakeProxy(plane.stub)
    proxy.outbox.put_nowait(mesh_pb2.ProxyMessage(ack=mesh_pb2.Ack(version="x", nonce="1")))
    with pytest.raises(aio.AioRpcError) as info:
        await proxy.receive()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first message" in (info.value.details() or "")


async def test_register_missing_fields_is_refused_by_name(plane: Plane) -> None:
    """A Register without a service, or with a bad address, names the field in the status."""
    for message, field in ((register(service=""), "register.service"),
                           (register(admin="nope"), "register.admin")):
        proxy = FakeProxy(plane.stub)
        proxy.outbox.put_nowait(message)
        with pytest.raises(aio.AioRpcError) as info:
            await proxy.receive()
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (info.value.details() or "")


async def test_ack_nack_bookkeeping_and_no_push_when_unchanged(plane: Plane) -> None:
    """ACK records the version; NACK keeps it and records the error; equal content is not sent."""
    proxy = FakeProxy(plane.stub)
    proxy.outbox.put_nowait(register())
    first = await proxy.receive()
    proxy.answer(first)
    state = plane.reconciler.states["reviews-v1-1"]
    await plane.until(lambda: state.acked_version == first.version, "first ACK")
    assert state.synced and state.nack is None and state.last_ack is not None

    pushed = plane.reconciler.counters.pushed
    plane.reconciler.mark_all()
    await plane.until(lambda: plane.reconciler.counters.unchanged > 0, "an unchanged pass")
    assert plane.reconciler.counters.pushed == pushed

    await plane.store.create(load_documents(ROUTE, "r.yaml")[0])
    second = await proxy.receive()
    proxy.answer(second, error="routes[0]: refused")
    await plane.until(lambda: state.nack is not None, "the NACK")
    assert state.nack == "routes[0]: refused"
    assert state.acked_version == first.version and not state.synced
    assert plane.reconciler.lagging(plane.reconciler.revision) == ["reviews-v1-1"]


async def test_reconnect_with_running_version_is_not_pushed_again(plane: Plane) -> None:
    """A proxy that registers with the version it runs is synced without a push, and that
    Register is its ACK of the version: proxy-status' lastAck is its time, not null (as it
    was after a control-plane restart that pushed nothing)."""
    proxy = FakeProxy(plane.stub)
    proxy.outbox.put_nowait(register())
    first = await proxy.receive()
    proxy.answer(first)
    await plane.until(lambda: plane.reconciler.states["reviews-v1-1"].synced, "synced")
    old = plane.reconciler.states["reviews-v1-1"]
    proxy.call.cancel()
    again = FakeProxy(plane.stub)
    registered_at = time.time()
    again.outbox.put_nowait(register(config_version=first.version))
    pushed = plane.reconciler.counters.pushed
    # the new stream's state (the old one is synced too until its stream's end is noticed)
    await plane.until(lambda: plane.reconciler.states["reviews-v1-1"] is not old
                      and plane.reconciler.states["reviews-v1-1"].sender is not None
                      and plane.reconciler.states["reviews-v1-1"].synced, "resynced")
    assert plane.reconciler.counters.pushed == pushed
    assert await plane.reconciler.wait_synced(plane.reconciler.revision, 1.0) == []
    state = plane.reconciler.states["reviews-v1-1"]
    assert state.last_ack is not None and state.last_ack >= registered_at
    listed = proxies_json(plane.registry, plane.reconciler)["proxies"]
    assert [(p["synced"], p["configVersion"], p["lastAck"] is not None) for p in listed] == [
        (True, first.version, True)]


async def refused(plane: Plane, message: mesh_pb2.ProxyMessage) -> aio.AioRpcError:
    """The status a stream opened with ``message`` ends with (it must end, with no snapshot)."""
    proxy = FakeProxy(plane.stub)
    proxy.outbox.put_nowait(message)
    with pytest.raises(aio.AioRpcError) as info:
        await proxy.receive()
    return info.value


async def test_register_needs_the_token_of_the_service_it_claims(plane: Plane) -> None:
    """No token, a wrong one, or another service's: no snapshot (it lists every endpoint) and
    no registry entry (it would become an endpoint of the service)."""
    cases = ((register(token=""), grpc.StatusCode.UNAUTHENTICATED),
             (register(token="ami-bt-forged"), grpc.StatusCode.PERMISSION_DENIED),
             (register(token=TOKENS.token_for("default", "ratings")),
              grpc.StatusCode.PERMISSION_DENIED),
             (register(token=TOKENS.token_for("other", "reviews")),
              grpc.StatusCode.PERMISSION_DENIED))
    for message, code in cases:
        assert (await refused(plane, message)).code() == code
    assert plane.registry.proxies() == []


async def test_the_control_planes_namespace_cannot_register(plane: Plane) -> None:
    """A proxy claiming ami-system (the control plane's identity, ns/ami-system/sa/meshctl)
    is PERMISSION_DENIED, even with a token made for it before the namespace was reserved."""
    from tests.test_security_ca_service import token_minted_before_the_reservation

    for mode in ("sidecar", "gateway"):
        token = token_minted_before_the_reservation(b"stream-test-secret-0123456789",
                                                    "ami-system", "meshctl")
        status = await refused(plane, register(service="meshctl", namespace="ami-system",
                                               mode=mode, token=token))
        assert status.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "register.namespace: namespace 'ami-system' is reserved for the control " \
            "plane" in (status.details() or "")
    assert plane.registry.proxies() == []


def gateway(name: str = "ingress-gw", service: str = "ingress", **fields: Any
            ) -> mesh_pb2.ProxyMessage:
    """A gateway's Register (no inbound) with its service's gateway token unless told."""
    return register(name, service=service, mode="gateway", inbound="", labels={},
                    **{"token": TOKENS.gateway_token_for("default", service), **fields})


async def test_a_gateway_token_makes_a_trusted_gateway_and_a_service_token_does_not(
        plane: Plane) -> None:
    """Both tokens register a gateway (a service token keeps working, for deployments made
    before gateway tokens); only the gateway token's registration is a trusted gateway."""
    trusted, untrusted = FakeProxy(plane.stub), FakeProxy(plane.stub)
    trusted.outbox.put_nowait(gateway())
    untrusted.outbox.put_nowait(gateway("edge-gw", "edge",
                                        token=TOKENS.token_for("default", "edge")))
    await trusted.receive()
    await untrusted.receive()
    infos = {p.name: p for p in plane.registry.gateways()}
    assert infos["ingress-gw"].trusted_gateway is True
    assert infos["edge-gw"].trusted_gateway is False


async def test_a_gateway_token_fits_its_own_service_and_gateways_only(plane: Plane) -> None:
    """Another service's gateway token (as gateway or sidecar), one of another namespace, and
    the service's own gateway token in a sidecar: refused, nothing registered."""
    other = TOKENS.gateway_token_for("default", "edge")
    for message in (gateway(token=other), gateway(token=TOKENS.gateway_token_for("b", "ingress")),
                    register(token=TOKENS.gateway_token_for("default", "ratings"))):
        assert (await refused(plane, message)).code() == grpc.StatusCode.PERMISSION_DENIED
    status = await refused(plane, register(token=TOKENS.gateway_token_for("default", "reviews")))
    assert status.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "a gateway token of default/reviews, for proxies in --mode gateway only" in (
        status.details() or "")
    assert plane.registry.proxies() == []


async def test_register_fields_are_bounded(plane: Plane) -> None:
    """Every Register field ends up in snapshots and proxy-status: names, labels and sizes
    follow Kubernetes' rules, so one proxy cannot bloat every snapshot (or split a log line)."""
    for message, field in ((register(labels={"version": "v1", "x": "y" * 100_000}),
                            "register.labels"),
                           (register(name="reviews\nforged log line"), "register.name"),
                           (register(service="Bad Service!"), "register.service"),
                           (register(namespace="x/y"), "register.namespace"),
                           (register(inbound="127.0.0.1:" + "9" * 600), "register.inbound"),
                           (register(proxy_version="0.1.0\x1b[2J"), "register.proxy_version"),
                           (register(proxy_version="0.1.0 (patched)"),
                            "register.proxy_version"),
                           (register(build="cpython\n3.11"), "register.build")):
        status = await refused(plane, message)
        assert status.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in (status.details() or ""), field
    assert plane.registry.proxies() == []


async def test_a_name_in_use_by_another_proxy_is_refused(plane: Plane) -> None:
    """Two replicas with the same name: the second is refused (ALREADY_EXISTS), the first keeps
    its stream, its entry and its pushes (a takeover would orphan it silently)."""
    first = FakeProxy(plane.stub)
    first.outbox.put_nowait(register())
    first.answer(await first.receive())
    status = await refused(plane, register(inbound="127.0.0.2:9001"))
    assert status.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "unique --name" in (status.details() or "")
    assert plane.registry.get("reviews-v1-1").inbound == "127.0.0.1:9001"  # type: ignore[union-attr]
    await plane.store.create(load_documents(ROUTE, "r.yaml")[0])
    assert (await first.receive()).version  # still pushed to


async def test_the_same_proxy_reconnecting_replaces_its_old_stream(plane: Plane) -> None:
    """Same name and addresses: the proxy reconnected before its old stream was seen dead; the
    new stream gets the pushes and the old one is closed (ABORTED), not left orphaned."""
    old = FakeProxy(plane.stub)
    old.outbox.put_nowait(register())
    old.answer(await old.receive())
    new = FakeProxy(plane.stub)
    new.outbox.put_nowait(register())
    new.answer(await new.receive())
    with pytest.raises(aio.AioRpcError) as info:
        await old.receive()
    assert info.value.code() == grpc.StatusCode.ABORTED
    await plane.store.create(load_documents(ROUTE, "r.yaml")[0])
    assert (await new.receive()).version
    assert plane.registry.connected("reviews-v1-1")


async def test_a_stream_that_never_registers_is_closed(plane: Plane,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Silent streams do not pile up: no Register within the deadline ends the stream."""
    monkeypatch.setattr(xds, "REGISTER_DEADLINE", 0.2)
    proxy = FakeProxy(plane.stub)  # sends nothing
    with pytest.raises(aio.AioRpcError) as info:
        await proxy.receive(timeout=5.0)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

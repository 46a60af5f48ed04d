"""The proxy's control-plane agent: identity from flags, ACK on apply, NACK keeps the old config."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.controlplane.xds import start_grpc_server
from proxy.__main__ import build_parser, options_from_args
from proxy.agent import AgentIdentity, ControlPlaneAgent, parse_labels
from proxy.server import ProxyServer

ARGS = ["--control-plane", "127.0.0.1:1", "--service", "reviews", "--labels", "version=v2",
        "--inbound", "0.0.0.0:9083", "--app", "127.0.0.1:9080"]


def test_identity_from_flags() -> None:
    """The default name is service-version-inboundport and a wildcard inbound is advertised."""
    ident = AgentIdentity.from_args(build_parser().parse_args(ARGS))
    assert ident.name == "reviews-v2-9083"
    assert ident.labels == {"version": "v2"}
    assert not ident.inbound.startswith("0.0.0.0") and ident.inbound.endswith(":9083")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_labels("version")


async def test_a_sidecar_registers_its_apps_port_as_the_workload_port() -> None:
    """Register.app_port is --app's port (what PeerAuthentication portLevelMtls names), 0
    without --app; the control plane refuses one out of range, as any bad Register field."""
    from meshctl.controlplane.registry import ProxyInfo
    from meshctl.controlplane.xds import RegistrationError, check_proxy, proxy_info

    args = build_parser().parse_args(ARGS)
    agent = ControlPlaneAgent(ProxyServer(options_from_args(args)), args)
    register = agent._register(True, "")
    assert register.app_port == 9080 and proxy_info(register).app_port == 9080
    without = build_parser().parse_args(ARGS[:-2])
    assert AgentIdentity.from_args(without).app_port == 0
    with pytest.raises(RegistrationError, match=r"register\.app_port"):
        check_proxy(ProxyInfo(name="r", service="r", inbound="127.0.0.1:1", app_port=70000))


def test_advertise_names_the_host_the_mesh_reaches_inbound_and_admin_at() -> None:
    """--advertise replaces the host of both advertised addresses (compose: the app's name)."""
    args = build_parser().parse_args([*ARGS, "--admin", "0.0.0.0:15000",
                                      "--advertise", "reviews-v2"])
    ident = AgentIdentity.from_args(args)
    assert (ident.inbound, ident.admin) == ("reviews-v2:9083", "reviews-v2:15000")


async def test_apply_acks_then_nacks_a_bad_snapshot_and_keeps_the_good_one() -> None:
    """A good push is applied with local node/app and ACKed; a bad one is NACKed with its error."""
    args = build_parser().parse_args(ARGS)
    server = ProxyServer(options_from_args(args))
    agent = ControlPlaneAgent(server, args)
    good = mesh_pb2.ConfigMessage(version="v-good", nonce="1", snapshot_json=json.dumps(
        {"services": {"ratings": {"endpoints": [{"address": "127.0.0.1:9"}]}}}).encode())
    answer = agent._apply(good)
    assert answer.WhichOneof("kind") == "ack" and answer.ack.nonce == "1"
    assert server.snapshot is not None and server.snapshot.version == "v-good"
    assert server.snapshot.node.service == "reviews"
    assert str(server.snapshot.app) == "127.0.0.1:9080"
    bad = mesh_pb2.ConfigMessage(version="v-bad", nonce="2", snapshot_json=json.dumps(
        {"mesh": {"mtls": "SOMETIMES"}}).encode())
    answer = agent._apply(bad)
    assert answer.WhichOneof("kind") == "nack" and "mesh.mtls" in answer.nack.error
    assert server.snapshot.version == "v-good" and agent.applied_version == "v-good"


def test_admin_answers_while_the_control_plane_does_not(tmp_path: Path) -> None:
    """A sidecar whose control plane is down serves /healthz at once and /ready says what it
    still lacks (config, certificate), instead of a closed port for its first waits (~20 s)."""
    from tests.helpers_mesh import free_port, http_get, start_sidecar, wait_for

    silent = f"127.0.0.1:{free_port()}"  # nothing listens there
    sidecar = start_sidecar(tmp_path, silent, "reviews", "v1", app="127.0.0.1:9",
                            wait_ready=False)
    try:
        admin = sidecar.info["admin"]
        wait_for(lambda: http_get(f"http://{admin}/healthz")[0] == 200, 8, "admin /healthz")
        status, body = http_get(f"http://{admin}/ready")
        checks = json.loads(body)
        assert status == 503
        assert (checks["config_applied"], checks["certificate_loaded"]) == (False, False)
    finally:
        sidecar.stop()


class _OneSnapshotThenUnavailable(mesh_pb2_grpc.MeshControlServicer):
    """Reads the Register, pushes one snapshot, then fails the stream as a dying server does."""

    async def StreamConfig(self, request_iterator: Any, context: Any) -> Any:
        first = await request_iterator.__anext__()
        assert first.WhichOneof("kind") == "register"
        yield mesh_pb2.ConfigMessage(version="v1", nonce="1", snapshot_json=json.dumps(
            {"services": {}}).encode())
        await request_iterator.__anext__()  # the ACK
        await context.abort(grpc.StatusCode.UNAVAILABLE, "going away")


async def test_a_broken_stream_leaves_no_task_behind() -> None:
    """When the control plane fails the stream, gRPC's task feeding it our messages ends too.
    It used to wait on the outbox forever, and was logged as "Task was destroyed but it is
    pending!" (and the generator's aclose() as an error) once the call was collected."""
    cp, port = await start_grpc_server(_OneSnapshotThenUnavailable(), "127.0.0.1:0")
    args = build_parser().parse_args(["--control-plane", f"127.0.0.1:{port}", *ARGS[2:]])
    agent = ControlPlaneAgent(ProxyServer(options_from_args(args)), args)
    try:
        async with aio.insecure_channel(args.control_plane) as channel:
            with pytest.raises(aio.AioRpcError, match="going away"):
                await agent._stream(mesh_pb2_grpc.MeshControlStub(channel))  # type: ignore[no-untyped-call]
            assert agent.applied_version == "v1"

            def feeders() -> list[asyncio.Task[Any]]:
                return [t for t in asyncio.all_tasks() if not t.done()
                        and "_consume_request_iterator" in repr(t.get_coro())]

            # The feeder sees the end of the outbox within a few loop turns; gRPC's own threads
            # may be slow to let it on a loaded machine: a deadline, not a count of turns (one
            # that waits on the outbox forever still fails)
            loop = asyncio.get_running_loop()
            end = loop.time() + 10
            while feeders() and loop.time() < end:
                await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait
            assert feeders() == []
    finally:
        await cp.stop(None)

"""The proxy's control-plane agent: identity from flags, ACK on apply, NACK keeps the old config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from meshctl.api import mesh_pb2
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

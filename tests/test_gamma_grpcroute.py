"""Gateway API GRPCRoutes attached to a Service (GAMMA) through a real control plane, sidecars
and gRPC servers (grpcio): method and header matches, header edits, a Service per version."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.grpcapp import EchoServer, channel, method, serving_in_thread
from tests.helpers_mesh import http_json
from tests.meshbuilder import Mesh
from tests.resources import mesh_config

pytestmark = pytest.mark.timeout(180)
DEADLINE = 10.0

GRPCROUTE = """apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: greeter
spec:
  parentRefs:
    - {group: "", kind: Service, name: greeter, port: 50051}
  rules:
    - matches:
        - method: {service: ami.test.Echo, method: Unary}
          headers: [{name: x-canary, value: "yes"}]
      filters:
        - type: RequestHeaderModifier
          requestHeaderModifier:
            set: [{name: x-route, value: canary}]
      backendRefs: [{name: greeter-v2, port: 50051}]
    - matches:
        - method: {method: Unary}
          headers: [{name: x-v2, value: "1"}]
      backendRefs: [{name: greeter-v2, port: 50051}]
    - backendRefs: [{name: greeter-v1, port: 50051}]
"""


class GrpcMesh(Mesh):
    """greeter (the parent) and greeter-v1, greeter-v2 (a Service per version), a caller."""

    def build(self) -> GrpcMesh:
        self.servers = {name: EchoServer(name) for name in ("greeter", "greeter-v1",
                                                            "greeter-v2")}
        serving = serving_in_thread(*self.servers.values())
        serving.__enter__()
        self.defer(lambda: serving.__exit__(None, None, None))
        self.control_plane(mesh_config(mtls="DISABLE"), warmup=0.0)
        for name, server in self.servers.items():
            self.sidecar(name, app=f"127.0.0.1:{server.port}")
        self.client = self.sidecar("client")
        return self

    async def call(self, name: str, metadata: tuple[tuple[str, str], ...] = ()
                   ) -> dict[str, Any]:
        port = int(self.client.info["outbound"].rsplit(":", 1)[1])
        async with channel(port, "greeter") as ch:
            answer = await method(ch, name)(b"x", metadata=metadata, timeout=DEADLINE)
        return dict(json.loads(answer))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcMesh]:
    with GrpcMesh(tmp_path_factory.mktemp("grpcroute")) as m:
        m.build().wait_synced()
        m.apply_synced(GRPCROUTE)
        yield m


async def test_method_and_header_match_pick_the_service(mesh: GrpcMesh) -> None:
    """Unary with x-canary goes to greeter-v2 with the header the rule sets; without it the
    default rule sends it to greeter-v1; the parent's own server gets nothing."""
    canary = await mesh.call("Unary", (("x-canary", "yes"),))
    assert canary["server"] == "greeter-v2" and canary["metadata"]["x-route"] == "canary"
    plain = await mesh.call("Unary")
    assert plain["server"] == "greeter-v1" and "x-route" not in plain["metadata"]
    by_method = await mesh.call("Unary", (("x-v2", "1"),))  # a method-only match
    assert by_method["server"] == "greeter-v2" and "x-route" not in by_method["metadata"]
    assert mesh.servers["greeter"].calls == 0


def test_status_and_get(mesh: GrpcMesh) -> None:
    """A GRPCRoute is listed with `get grpcroutes` and carries status.parents."""
    status, doc = http_json(mesh.cp.info["api"] + "/api/v1/namespaces/default/grpcroutes/greeter")
    assert status == 200 and doc["kind"] == "GRPCRoute"
    conditions = doc["status"]["parents"][0]["conditions"]
    assert [(c["type"], c["status"]) for c in conditions] == [("Accepted", "True"),
                                                              ("ResolvedRefs", "True")]
    table = mesh.meshctl("get", "grpcroutes")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[1].split()[:5] == ["greeter", "greeter", "3",
                                                        "greeter-v2,greeter-v1", "yes"]

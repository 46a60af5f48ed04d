"""The shared test helpers: resource factories equal the YAML they replace; a mesh stops all."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from meshctl.api.resources import load_documents
from tests.helpers_mesh import MeshProcess
from tests.meshbuilder import Mesh
from tests.resources import (
    destination_policy,
    documents,
    header_rule,
    mesh_config,
    peer_authentication,
    route,
    split,
)

# What the test modules wrote by hand before the factories, as the control plane reads it.
HAND_WRITTEN = """\
apiVersion: ami.mesh/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec: {mtls: {mode: DISABLE}}
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews}
spec:
  host: reviews
  rateLimit: {requestsPerSecond: 0.5, burst: 2}
  subsets:
    - {name: v1, labels: {version: v1}}
    - {name: v2, labels: {version: v2}}
    - {name: v3, labels: {version: v3}}
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews}
spec:
  host: reviews
  rules:
    - matches: [{headers: {end-user: {exact: jason}}}]
      backends: [{subset: v2}]
    - backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]
---
apiVersion: ami.mesh/v1alpha1
kind: PeerAuthentication
metadata: {name: legacy}
spec: {selector: {service: legacy}, mtls: {mode: PERMISSIVE}}
"""


def test_the_factories_make_the_documents_they_replace() -> None:
    made = documents(
        mesh_config(mtls="DISABLE"),
        destination_policy("reviews", ("v1", "v2", "v3"),
                           rateLimit={"requestsPerSecond": 0.5, "burst": 2}),
        route("reviews", {"v1": 90, "v2": 10}, rules=[
            {"matches": [{"headers": {"end-user": {"exact": "jason"}}}],
             "backends": [{"subset": "v2"}]}]),
        peer_authentication("legacy", "PERMISSIVE", service="legacy"))
    assert ([r.raw for r in load_documents(made, "made")]
            == [r.raw for r in load_documents(HAND_WRITTEN, "hand")])


# The variants: a namespace, a subset with fields of its own, a named header rule.
HAND_WRITTEN_VARIANTS = """\
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  loadBalancer: ROUND_ROBIN
  subsets:
  - {name: v1, labels: {version: v1}}
  - name: v2
    labels: {version: v2}
    loadBalancer: RANDOM
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  rules:
  - name: jason
    matches: [{headers: {end-user: {exact: jason}}}]
    backends: [{subset: v1}]
  - matches: [{headers: {x-canary: {exact: "1"}}}]
    backends: [{subset: v2}]
  - backends: [{subset: v1, weight: 50}, {subset: v2, weight: 50}]
"""


def test_the_factories_make_the_variants_they_replace() -> None:
    made = documents(
        destination_policy("reviews", ("v1", {"name": "v2", "loadBalancer": "RANDOM"}),
                           namespace="default", loadBalancer="ROUND_ROBIN"),
        route("reviews", {"v1": 50, "v2": 50}, namespace="default", rules=[
            header_rule("v1", name="jason"), header_rule("v2", "1", header="x-canary")]))
    assert ([r.raw for r in load_documents(made, "made")]
            == [r.raw for r in load_documents(HAND_WRITTEN_VARIANTS, "hand")])


def test_a_rule_used_twice_is_written_out_twice() -> None:
    """The resource loader refuses YAML anchors and aliases: a factory given the same dict
    twice (a shared rule) writes it out twice."""
    to_v1 = split({"v1": 100})
    beta = {**header_rule("v1", "1", header="x-beta"), **to_v1}  # shares to_v1's backends
    [made] = load_documents(route("reviews", rules=[beta, to_v1]), "made")
    assert made.raw["spec"]["rules"] == [beta, to_v1]


def _sleeper(tmp: Path, name: str) -> MeshProcess:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    return MeshProcess(name, proc, tmp / f"{name}.log")


def test_closing_stops_every_process_last_first_even_after_a_failing_cleanup(
        tmp_path: Path) -> None:
    order: list[str] = []
    with pytest.raises(RuntimeError, match="cleanup failed"), Mesh(tmp_path) as mesh:
        first = mesh.started(_sleeper(tmp_path, "first"))
        mesh.defer(lambda: order.append("between"))
        mesh.defer(lambda: (_ for _ in ()).throw(RuntimeError("cleanup failed")))
        last = mesh.started(_sleeper(tmp_path, "last"))
        mesh.defer(lambda: order.append(f"last stopped: {last.proc.poll() is not None}"))
    assert order == ["last stopped: False", "between"]
    assert first.proc.returncode == last.proc.returncode == -signal.SIGTERM
    assert mesh.procs == [first, last]

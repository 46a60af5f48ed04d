"""Snapshots shared by inputs, with a real `meshctl serve` and 40 simulated sidecar streams
(bench.cpsim): two replicas of each of ten workloads in ns-0 and in ns-1, ns-1 scoped to
itself by a Sidecar. `meshctl shift` of ns-0's reviews Route reaches exactly ns-0's 20 sims
(replicas get the same bytes) and none of ns-1's, returns once all 40 count as synced, and
the control plane computes one snapshot per workload the change reaches (ns-0's 10), not one
per proxy (40)."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bench.controlplane import SCOPE, SEED, route_doc
from bench.cpsim import Fleet
from meshctl.ca import BootstrapTokens
from tests.helpers_mesh import PYTHON, ROOT, MeshProcess, http_get, start_control_plane

pytestmark = pytest.mark.timeout(120)
SIMS, REACHED, WORKLOADS = 40, 20, 10  # ns-0: 10 workloads, 2 replicas each


def counters(cp: MeshProcess) -> dict[str, float]:
    """The reconciler's totals from the control plane's /metrics."""
    status, body = http_get(cp.info["api"] + "/metrics",
                            {"Authorization": f"Bearer {cp.info['token']}"})
    assert status == 200, body
    out = {}
    for line in body.decode().splitlines():
        name, _, value = line.partition(" ")
        if name.startswith("ami_controlplane_") and name.endswith("_total"):
            out[name.removeprefix("ami_controlplane_").removesuffix("_total")] = float(value)
    return out


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[MeshProcess, Fleet]]:
    """The control plane and its 40 synced sims: ns-0's see all 40 endpoints, ns-1's 20."""
    config = tmp_path / "mesh"
    config.mkdir()
    (config / "mesh.yaml").write_text(SEED % "ns-0" + "---\n" + json.dumps(route_doc(0, "ns-0"))
                                      + "\n---\n" + SCOPE % "ns-1")
    cp = await asyncio.to_thread(start_control_plane, tmp_path, config_dir=config, warmup=0)
    certs = cp.info["certs_dir"]
    fleet = Fleet(cp.info["grpc"], 0, SIMS, ca_pem=(certs / "trust-bundle.pem").read_bytes(),
                  tokens=BootstrapTokens.load(certs), namespaces=2)
    fleet.start()
    try:
        waiting = await fleet.wait_for(
            lambda s: s.endpoints == (SIMS if s.ident.namespace == "ns-0" else SIMS // 2), 60)
        assert waiting == 0, (fleet.errors(), cp.output()[-2000:])
        yield cp, fleet
    finally:
        await fleet.stop()
        cp.stop()


async def test_a_shift_reaches_exactly_the_sidecars_that_see_the_route(
        mesh: tuple[MeshProcess, Fleet]) -> None:
    """ns-0's 20 sims get the new split, each replica pair the same version; ns-1's get
    nothing, yet count as synced: the shift reports all 40; ns-0's 10 workloads' snapshots
    are computed (each shared by its 2 replicas), ns-1's not at all."""
    cp, fleet = mesh
    messages = {s.ident.name: s.messages for s in fleet.sims}
    before = counters(cp)
    shift = await asyncio.create_subprocess_exec(
        PYTHON, "-m", "meshctl", "--control-plane", cp.info["api"], "shift", "reviews", "90/10",
        "-n", "ns-0", "--timeout", "30", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "AMI_TOKEN": cp.info["token"]})
    out, err = await shift.communicate()  # the sims keep answering meanwhile (same loop)
    assert shift.returncode == 0, err.decode()
    assert f"applied, {SIMS} proxies synced" in out.decode()
    ns0 = [s for s in fleet.sims if s.ident.namespace == "ns-0"]
    assert await fleet.wait_for(lambda s: s not in ns0 or 10 in s.marker_acked, 30) == 0
    for sim in fleet.sims:
        assert sim.messages - messages[sim.ident.name] == (sim in ns0), sim.ident
    versions: dict[tuple[str, str], set[str]] = {}
    for sim in ns0:
        versions.setdefault((sim.ident.service, sim.ident.version), set()).add(sim.last_version)
    assert all(len(v) == 1 for v in versions.values())  # replicas: the same snapshot
    assert len(set.union(*versions.values())) == len(versions)  # workloads: their own
    after = counters(cp)
    passes = after["passes"] - before["passes"]
    assert passes >= 1 and after["pushed"] - before["pushed"] == REACHED
    assert after["computed"] - before["computed"] == WORKLOADS
    assert after["shared"] - before["shared"] == REACHED - WORKLOADS
    assert fleet.errors() == []


async def test_a_sidecar_joining_reaches_the_sidecars_that_list_its_service(
        mesh: tuple[MeshProcess, Fleet]) -> None:
    """A 41st sim (a reviews v1 replica in ns-0) registers: ns-0's sims, which list ns-0's
    services, get its endpoint; ns-1's, scoped to ns-1, are neither computed nor pushed."""
    cp, fleet = mesh
    messages = {s.ident.name: s.messages for s in fleet.sims}
    before = counters(cp)
    certs = cp.info["certs_dir"]
    joiner = Fleet(cp.info["grpc"], SIMS, 1, ca_pem=(certs / "trust-bundle.pem").read_bytes(),
                   tokens=BootstrapTokens.load(certs), namespaces=2)
    assert joiner.sims[0].ident.namespace == "ns-0"
    joiner.start()
    try:
        assert await joiner.wait_for(lambda s: s.endpoints == SIMS + 1, 30) == 0
        ns0 = [s for s in fleet.sims if s.ident.namespace == "ns-0"]
        assert await fleet.wait_for(lambda s: s not in ns0 or s.endpoints == SIMS + 1, 30) == 0
        for sim in fleet.sims:
            assert sim.messages - messages[sim.ident.name] == (sim in ns0), sim.ident
        after = counters(cp)
        # ns-0's 10 workloads (the joiner is a replica of one), whatever the passes
        assert after["computed"] - before["computed"] == WORKLOADS
        assert after["shared"] - before["shared"] == REACHED + 1 - WORKLOADS
        assert fleet.errors() == joiner.errors() == []
    finally:
        await joiner.stop()

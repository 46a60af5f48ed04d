"""A control-plane restart with a real `meshctl serve` and 40 simulated sidecar streams
(bench.cpsim): the state file of a clean stop lists every proxy, even with `--grace 0`, so
when the sims reconnect saying what they run, the restarted control plane pushes none of them
anything (they run its snapshots), and the next change reaches them all as deltas."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.controlplane import SEED, route_doc
from bench.cpsim import Fleet
from meshctl.ca import BootstrapTokens
from meshctl.client import ControlPlaneClient
from meshctl.controlplane.registrystate import decode
from tests.helpers_mesh import http_json, proxies, start_control_plane
from tests.test_controlplane_shared_snapshots import counters

pytestmark = pytest.mark.timeout(120)
SIMS = 40


async def test_a_restart_pushes_nothing_to_sims_running_its_snapshots(tmp_path: Path) -> None:
    config = tmp_path / "mesh"
    config.mkdir()
    (config / "mesh.yaml").write_text(SEED % "default" + "---\n" + json.dumps(route_doc(0))
                                      + "\n")
    # --grace 0: a stream's end drops its proxy at once (the short grace that exposed it)
    cp = await asyncio.to_thread(start_control_plane, tmp_path, config_dir=config, warmup=0,
                                 grace=0.0)
    certs = cp.info["certs_dir"]
    fleet = Fleet(cp.info["grpc"], 0, SIMS, ca_pem=(certs / "trust-bundle.pem").read_bytes(),
                  tokens=BootstrapTokens.load(certs))
    fleet.start()
    try:
        assert await fleet.wait_for(lambda s: s.endpoints == SIMS, 60) == 0, fleet.errors()
        state = cp.info["state_dir"] / "registry.json"

        def saved() -> int:
            return len(decode(state.read_bytes())) if state.exists() else 0

        while await asyncio.to_thread(saved) < SIMS:  # the state file caught up with them
            await asyncio.sleep(0.05)  # (the test's timeout bounds the wait)
        # The stop ends the 40 streams: a proxy expiring meanwhile (grace 0) was missing from
        # the state file, and the restarted control plane sent the first sims back configs
        # without it, in full.
        assert await asyncio.to_thread(cp.stop) == 0, cp.output()[-2000:]
        await fleet.stop()
        assert saved() == SIMS
        messages = {s.ident.name: s.messages for s in fleet.sims}
        api, grpc_address = cp.info["api"], cp.info["grpc"]
        cp = await asyncio.to_thread(
            start_control_plane, tmp_path, config_dir=config, warmup=30.0, grace=0.0,
            http_port=int(api.rpartition(":")[2]), grpc_port=int(grpc_address.rpartition(":")[2]))
        fleet.start()  # each sim reconnects saying the version it runs
        names = {s.ident.name for s in fleet.sims}

        def reconnected() -> bool:
            return {p["name"] for p in proxies(cp) if p["connected"]} >= names

        while not await asyncio.to_thread(reconnected):
            await asyncio.sleep(0.05)  # (the test's timeout bounds the wait)
        status, body = await asyncio.to_thread(
            http_json, cp.info["api"] + "/api/v1/sync?timeout=30", timeout=40.0)
        assert status == 200 and body["synced"] and body["proxies"] == SIMS, body
        totals = await asyncio.to_thread(counters, cp)
        assert totals.get("pushed", 0.0) == 0, totals
        assert {s.ident.name: s.messages for s in fleet.sims} == messages
        # the next change: a delta to each, built on what it said it runs
        client = ControlPlaneClient(cp.info["api"], cp.info["token"])
        await asyncio.to_thread(client.update, route_doc(30))
        assert await fleet.wait_for(lambda s: 30 in s.marker_acked, 60) == 0, fleet.errors()
        totals = await asyncio.to_thread(counters, cp)
        assert totals["pushed"] == totals["pushed_deltas"] == SIMS, totals
        # no NACK, no bad hash: the only errors are the streams the first stop ended
        assert all(e.partition(": ")[2].startswith("stream: ") for e in fleet.errors())
    finally:
        await fleet.stop()
        cp.stop()


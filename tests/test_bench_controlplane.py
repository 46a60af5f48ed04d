"""The control-plane bench harness: snapshot facts, verdicts, and a real smoke run at N=5."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.controlplane import SizePlan, verdicts
from bench.cpsim import (
    Fleet,
    SimSidecar,
    SnapshotFacts,
    light_snapshot_facts,
    sim_identity,
    snapshot_facts,
)

REPO = Path(__file__).resolve().parent.parent
SNAPSHOT = json.dumps({
    "mesh": {}, "services": {"reviews": {"endpoints": [
        {"address": "127.0.0.1:1", "labels": {"version": "v1"}},
        {"address": "127.0.0.1:2", "labels": {"version": "v2"}}]},
        "svc-0": {"endpoints": [{"address": "127.0.0.1:3"}]}},
    "routes": [{"host": "reviews", "rules": [{"backends": [
        {"subset": "v1", "weight": 93}, {"subset": "v2", "weight": 7}]}]}],
    "inbound": {"authorization": []}, "node": {"service": "svc-0"}}).encode()


def test_full_and_light_parsing_agree() -> None:
    """Both parsers count every endpoint and read the reviews v2 weight as the marker."""
    assert snapshot_facts(SNAPSHOT) == light_snapshot_facts(SNAPSHOT)
    assert snapshot_facts(SNAPSHOT).endpoints == 3
    assert snapshot_facts(SNAPSHOT).marker == 7


def test_sim_identities_are_distinct_and_include_both_reviews_versions() -> None:
    """Names and inbound addresses never repeat; reviews v1 and v2 come first."""
    idents = [sim_identity(i) for i in range(1000)]
    assert len({i.name for i in idents}) == len({i.inbound for i in idents}) == 1000
    assert [(i.service, i.version) for i in idents[:2]] == [("reviews", "v1"), ("reviews", "v2")]


def test_verdicts_fail_an_incomplete_or_slow_size() -> None:
    """A p99 over the limit, or a round that never converged, is a FAIL; RSS is compared too."""
    fast = {"sidecars": 100, "rounds": 2, "complete_rounds": 2, "propagation_ms": {"p99": 150.0},
            "rss_mb": 80.0}
    lost = dict(fast, complete_rounds=1)
    slow = {"sidecars": 1000, "rounds": 2, "complete_rounds": 2,
            "propagation_ms": {"p99": 1500.0}, "rss_mb": 250.0}
    assert [v["pass"] for v in verdicts([fast, slow])] == [True, False, True]
    assert [v["pass"] for v in verdicts([lost])] == [False]
    assert SizePlan(5, 2, 500).full_parse is False


def test_smoke_run_every_sim_receives_every_change(tmp_path: Path) -> None:
    """A real meshctl serve with 5 sims and 2 route changes: each change reaches all 5."""
    out = tmp_path / "cp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.controlplane", "--sizes", "5", "--rounds", "2",
         "--json", str(out), "--run-dir", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    (size,) = result["sizes"]
    assert size["sidecars"] == 5 and size["rounds"] == size["complete_rounds"] == 2
    assert size["acked_per_round"] == [5, 5]
    assert size["errors"] == []
    assert set(size["propagation_ms"]) == {"p50", "p99", "max"}
    assert 0 < size["propagation_ms"]["p50"] <= size["propagation_ms"]["max"]
    assert size["server_sync_ms"]["max"] > 0
    assert size["rss_mb"] > 0 and size["cpu_s"] > 0
    assert "5" in proc.stdout and "p99" in proc.stdout


def test_smoke_run_restart_reconnects_every_sim_and_pushes_nothing(tmp_path: Path) -> None:
    """`--restart`: the control plane restarts after the rounds, the 10 sims reconnect saying
    what they run, all are synced again and the restarted control plane pushed nothing."""
    out = tmp_path / "cp.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.controlplane", "--sizes", "10", "--rounds", "1",
         "--restart", "--json", str(out), "--run-dir", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (size,) = json.loads(out.read_text())["sizes"]
    restart = size["restart"]
    assert restart["synced"] and restart["resynced_s"] > 0, restart
    assert restart["pushed"] == restart["messages"] == 0, restart
    assert "restart: all reconnected and synced" in proc.stdout


def test_smoke_run_scoped_by_a_sidecar_per_namespace(tmp_path: Path) -> None:
    """40 sims over 2 namespaces, with and without `--sidecar`: the 20 of ns-0 get each
    change; scoped, each snapshot lists its namespace's 20 endpoints (not 40), so it is
    smaller, and only ns-0's sims are pushed the change, or computed; a snapshot is computed
    once per workload, shared by its two replicas."""
    sizes = {}
    for scoped in (False, True):
        out = tmp_path / f"cp-{scoped}.json"
        proc = subprocess.run(
            [sys.executable, "-m", "bench.controlplane", "--sizes", "40", "--rounds", "2",
             "--namespaces", "2", *(["--sidecar"] if scoped else []),
             "--json", str(out), "--run-dir", str(tmp_path / f"run-{scoped}")],
            cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        (sizes[scoped],) = json.loads(out.read_text())["sizes"]
    for size in sizes.values():
        assert size["acked_per_round"] == [20, 20] and size["errors"] == []
    assert sizes[True]["snapshot_kb"] < 0.7 * sizes[False]["snapshot_kb"]
    # one push per change: to all 40, or to ns-0's 20
    assert sizes[False]["round_messages"] == 2 * 40
    assert sizes[True]["round_messages"] == 2 * 20
    # one snapshot computed per workload the change reaches (10 kinds in each namespace), its
    # replica given the same one: all 20 workloads, or ns-0's 10 when scoped
    for scoped, workloads in ((False, 20), (True, 10)):
        rounds = sizes[scoped]["per_round"]
        assert rounds["computed"] == rounds["shared"] == workloads


async def test_fleet_wait_rechecks_only_the_sims_that_moved() -> None:
    """Waiting on 300 sims that ACK one at a time checks each sim a bounded number of times,
    not every sim on every ACK (O(N²): at 500 sims per process the sims' core spent most of
    a change rescanning, and the bench measured that instead of the control plane)."""
    fleet = Fleet("127.0.0.1:1", 0, 300)  # never started: ACKs are recorded by hand
    checks = 0

    def done(sim: SimSidecar) -> bool:
        nonlocal checks
        checks += 1
        return 5 in sim.marker_acked

    waiting = asyncio.create_task(fleet.wait_for(done, 30.0))
    await asyncio.sleep(0)
    for sim in fleet.sims:
        sim._record_ack(SnapshotFacts(endpoints=300, marker=5))
        await asyncio.sleep(0)  # the waiter runs between ACKs, as between stream reads
    assert await waiting == 0
    assert checks <= 2 * len(fleet.sims)
    # a subset: only its sims are waited for
    ns0 = fleet.sims[:10]
    assert await fleet.wait_for(lambda s: 6 in s.marker_acked, 0.01, ns0) == 10
    for sim in ns0:
        sim._record_ack(SnapshotFacts(endpoints=300, marker=6))
    assert await fleet.wait_for(lambda s: 6 in s.marker_acked, 5.0, ns0) == 0


def test_a_sim_checks_every_push_hashing_each_once_and_nacks_a_bad_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A full snapshot and a delta are ACKed when their version is the hash of the bytes and
    NACKed when not (as the proxy answers); each push is hashed once (a delta by apply_delta:
    the sim hashed it a second time); the endpoints are counted when asked."""
    from bench import cpsim
    from meshctl.api import mesh_pb2

    hashes = 0
    real = hashlib.sha256

    def counting(data: bytes) -> Any:
        nonlocal hashes
        hashes += 1
        return real(data)

    monkeypatch.setattr(cpsim.hashlib, "sha256", counting)
    sim = SimSidecar(sim_identity(0), lambda: 1.0, lambda s: None)
    version = real(SNAPSHOT).hexdigest()[:12]
    answer, facts = sim._answer(mesh_pb2.ConfigMessage(version=version, nonce="1",
                                                       snapshot_json=SNAPSHOT))
    assert answer.WhichOneof("kind") == "ack" and facts is not None and facts.marker == 7
    sim._record_ack(facts)
    assert hashes == 1 and sim.endpoints == 3
    bad, _ = sim._answer(mesh_pb2.ConfigMessage(version="0" * 12, nonce="2",
                                                snapshot_json=SNAPSHOT))
    assert bad.WhichOneof("kind") == "nack" and "not the hash" in bad.nack.error
    # a delta: the weight 7 -> 9 (one new byte between two ranges of the base)
    cut = SNAPSHOT.index(b'"weight": 7') + len(b'"weight": ')
    target = SNAPSHOT[:cut] + b"9" + SNAPSHOT[cut + 1:]
    splices = [mesh_pb2.Splice(offset=0, length=cut), mesh_pb2.Splice(data=b"9"),
               mesh_pb2.Splice(offset=cut + 1, length=len(SNAPSHOT) - cut - 1)]
    hashes = 0
    wrong, _ = sim._answer(mesh_pb2.ConfigMessage(
        version="1" * 12, nonce="3", base_version=version, delta=splices))
    assert wrong.WhichOneof("kind") == "nack" and "hashes to" in wrong.nack.error
    good, facts = sim._answer(mesh_pb2.ConfigMessage(
        version=real(target).hexdigest()[:12], nonce="4", base_version=version,
        delta=splices))
    assert good.WhichOneof("kind") == "ack" and facts is not None and facts.marker == 9
    assert hashes == 2  # once per delta
    assert sim.last_json == target

"""Delta pushes with a real control plane and real sidecars: a route change and endpoint churn
reach a proxy as deltas and leave its /config_dump identical to a replica's fed full
snapshots (a proxy built before deltas, which only ever gets those); a delta a proxy NACKs
is answered with the full snapshot (a fake stream); after a control-plane restart the
first change goes as a delta from what the proxy said it runs."""

from __future__ import annotations

import queue
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.ca import BootstrapTokens
from tests.helpers_mesh import (
    ROOT,
    MeshProcess,
    all_synced,
    apply_yaml,
    http_get,
    http_json,
    proxies,
    start_control_plane,
    start_sidecar,
    wait_for,
)
from tests.meshbuilder import Mesh
from tests.test_controlplane_deltas import reviews_split

pytestmark = pytest.mark.timeout(240)

_TAKES_DELTAS = "app_port=self.identity.app_port, deltas=True)"


def build_before_deltas(tmp: Path) -> Path:
    """This tree's proxy with a Register that does not set ``deltas``, as every proxy built
    before the field: the control plane must send it full snapshots only."""
    tree = tmp / "build-before-deltas"
    for package in ("proxy", "meshctl"):
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static"))
    agent = tree / "proxy" / "agent.py"
    text = agent.read_text()
    assert text.count(_TAKES_DELTAS) == 1
    agent.write_text(text.replace(_TAKES_DELTAS, "app_port=self.identity.app_port)"))
    return tree


class DeltaMesh(Mesh):
    """A control plane and two replicas of reviews v1: one takes deltas, one was built before."""

    def build(self) -> DeltaMesh:
        self.control_plane(reviews_split(90, 10), warmup=0.0, grace=0.0)
        self.delta = self.sidecar("reviews")
        self.full = self.sidecar("reviews", source=build_before_deltas(self.tmp))
        return self

    def wait_synced(self, *more: str) -> None:  # type: ignore[override]
        """Every named proxy listed ready (its endpoint in the snapshots) and synced."""
        names = self.names | set(more)
        wait_for(lambda: all_synced(self.cp, names) and all(
            p["ready"] for p in proxies(self.cp) if p["name"] in names), 30, "proxies synced")

    def counters(self) -> dict[str, float]:
        """The control plane's ami_controlplane_* counters (pushed bytes by kind)."""
        status, text = http_get(self.cp.info["api"] + "/metrics")
        assert status == 200
        out: dict[str, float] = {}
        for line in text.decode().splitlines():
            name, _, value = line.partition(" ")
            if name.startswith("ami_controlplane_") and "_total" in name:
                # pushed_total -> pushed; pushed_bytes_total{kind="delta"} -> pushed_bytes_delta
                base, _, kind = name[len("ami_controlplane_"):].partition('_total{kind="')
                out[base.removesuffix("_total") + (f"_{kind[:-2]}" if kind else "")] = \
                    float(value)
        return out

    def config_dump(self, proc: MeshProcess) -> dict[str, Any]:
        status, body = http_json(f"http://{proc.info['admin']}/config_dump")
        assert status == 200, body
        return dict(body)

    def same_config(self) -> bool:
        """Both replicas run the version the control plane computed for them, and their
        /config_dump snapshots are identical but for their own listeners."""
        listed = {p["name"]: p for p in proxies(self.cp)}
        dumps = [self.config_dump(p) for p in (self.delta, self.full)]
        versions = {listed[n]["configVersion"] for n in self.names}
        if len(versions) != 1 or {d["version"] for d in dumps} != versions:
            return False
        for d in dumps:
            d["snapshot"].pop("listeners")
        return bool(dumps[0]["snapshot"] == dumps[1]["snapshot"])



@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DeltaMesh]:
    with DeltaMesh(tmp_path_factory.mktemp("deltas")) as m:
        m.build().wait_synced()
        yield m


def grew(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def test_a_route_change_reaches_a_proxy_as_a_delta(mesh: DeltaMesh) -> None:
    """The proxy that takes deltas gets the change as one, a fraction of the full snapshot its
    replica built before deltas gets; both run the same config, byte for byte."""
    before = mesh.counters()
    mesh.apply_synced(reviews_split(50, 50))
    wait_for(mesh.same_config, 20, "both replicas on the new route")
    after = mesh.counters()
    assert grew(before, after, "pushed") == 2 and grew(before, after, "pushed_deltas") == 1
    assert 0 < grew(before, after, "pushed_bytes_delta") \
        < grew(before, after, "pushed_bytes_full") / 4
    assert grew(before, after, "delta_fallbacks") == 0
    dump = mesh.config_dump(mesh.delta)["snapshot"]
    assert [b["weight"] for b in dump["routes"]["reviews"]["rules"][0]["backends"]] == [50, 50]
    assert "(delta from" in mesh.delta.output()
    assert "(delta from" not in mesh.full.output()  # never sent one


def test_endpoint_churn_goes_as_deltas(mesh: DeltaMesh) -> None:
    """A ratings sidecar joining and leaving changes the endpoints of every snapshot: the
    proxy that takes deltas gets each change as one and still runs the full rebuild."""
    before = mesh.counters()
    ratings = start_sidecar(mesh.tmp, mesh.cp.info["grpc"], "ratings", "v1")
    try:
        mesh.wait_synced(ratings.info["name"])
        wait_for(lambda: "ratings" in mesh.config_dump(mesh.delta)["snapshot"]["services"]
                 and mesh.same_config(), 20, "ratings in both replicas' config")
        joined = mesh.counters()
        assert grew(before, joined, "pushed_deltas") >= 1
    finally:
        ratings.stop()
    wait_for(lambda: "ratings" not in mesh.config_dump(mesh.delta)["snapshot"]["services"]
             and mesh.same_config(), 20, "ratings gone from both replicas' config")
    after = mesh.counters()
    assert grew(joined, after, "pushed_deltas") >= 1
    assert grew(before, after, "delta_fallbacks") == 0
    # per message, what the deltas cost is a fraction of what the full snapshots did
    deltas = grew(before, after, "pushed_deltas")
    fulls = grew(before, after, "pushed") - deltas
    assert grew(before, after, "pushed_bytes_delta") / deltas \
        < grew(before, after, "pushed_bytes_full") / fulls / 4


class FakeStream:
    """A proxy's config stream driven by the test: it says it takes deltas and answers each
    message as the test tells it to."""

    def __init__(self, mesh: Mesh, name: str) -> None:
        roots = (mesh.cp.info["certs_dir"] / "trust-bundle.pem").read_bytes()
        self.channel = grpc.secure_channel(
            mesh.cp.info["grpc"], grpc.ssl_channel_credentials(root_certificates=roots))
        token = BootstrapTokens.load(mesh.cp.info["certs_dir"]).token_for("default", "details")
        self.outbox: queue.Queue[mesh_pb2.ProxyMessage | None] = queue.Queue()
        self.outbox.put(mesh_pb2.ProxyMessage(register=mesh_pb2.Register(
            name=name, service="details", labels={"version": "v1"}, inbound="127.0.0.1:1",
            mode="sidecar", ready=True, token=token, deltas=True)))
        self.inbox: queue.Queue[mesh_pb2.ConfigMessage] = queue.Queue()
        stub = mesh_pb2_grpc.MeshControlStub(self.channel)  # type: ignore[no-untyped-call]
        self.call = stub.StreamConfig(iter(self.outbox.get, None))
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for message in self.call:
                self.inbox.put(message)
        except grpc.RpcError:
            pass  # closed by the test

    def next(self) -> mesh_pb2.ConfigMessage:
        return self.inbox.get(timeout=20)

    def ack(self, message: mesh_pb2.ConfigMessage) -> None:
        self.outbox.put(mesh_pb2.ProxyMessage(ack=mesh_pb2.Ack(version=message.version,
                                                               nonce=message.nonce)))

    def nack(self, message: mesh_pb2.ConfigMessage, error: str) -> None:
        self.outbox.put(mesh_pb2.ProxyMessage(nack=mesh_pb2.Nack(
            version=message.version, nonce=message.nonce, error=error)))

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()
        self.channel.close()


def test_a_delta_the_proxy_cannot_build_is_answered_in_full(mesh: DeltaMesh) -> None:
    """A stream gets its first snapshot in full, the next change as a delta; it NACKs that
    delta (as a proxy whose result has another hash does) and the same version comes in full
    at once; ACKed, it is synced and proxy-status shows no NACK."""
    stream = FakeStream(mesh, "details-fake-1")
    try:
        first = stream.next()
        assert first.snapshot_json and not first.base_version
        stream.ack(first)
        mesh.wait_synced("details-fake-1")
        before = mesh.counters()
        apply_yaml(mesh.cp, reviews_split(20, 80))
        delta = stream.next()
        assert delta.base_version == first.version and delta.delta and not delta.snapshot_json
        stream.nack(delta, "delta: the result hashes to 000000000000, not " + delta.version)
        full = stream.next()
        assert full.version == delta.version and full.snapshot_json and not full.base_version
        assert b'"weight":80' in full.snapshot_json
        stream.ack(full)
        mesh.wait_synced("details-fake-1")
        [fake] = [p for p in proxies(mesh.cp) if p["name"] == "details-fake-1"]
        assert fake["synced"] and not fake.get("nack")
        after = mesh.counters()
        assert grew(before, after, "delta_fallbacks") == 1 and grew(before, after, "nacks") == 0
    finally:
        stream.close()
    wait_for(lambda: "details-fake-1" not in {p["name"] for p in proxies(mesh.cp)}, 20,
             "the fake stream gone")


def test_after_a_restart_the_first_change_goes_as_a_delta(mesh: DeltaMesh) -> None:
    """The control plane restarts and the sidecars reconnect saying what they run: nothing is
    pushed (the snapshots are unchanged: the state file of the stop lists both, even with
    `--grace 0`; it once lacked one that expired while the stop ended the streams, 1 run in 4
    on a loaded machine); the next change reaches the proxy that takes deltas as a delta, a
    fraction of the full snapshot its replica gets, with no fallback, and both end on the same
    config. (Last: it replaces the control plane.)"""
    api, grpc_address = mesh.cp.info["api"], mesh.cp.info["grpc"]
    mesh.cp.stop()
    # --warmup keeps the registry it restored until they are back: their snapshots come out
    # unchanged and nothing is pushed on their new streams (whichever reconnects first)
    mesh.cp = start_control_plane(mesh.tmp, http_port=int(api.rpartition(":")[2]),
                                  grpc_port=int(grpc_address.rpartition(":")[2]),
                                  warmup=20.0, grace=0.0)
    wait_for(lambda: {p["name"] for p in proxies(mesh.cp) if p["connected"]} >= mesh.names,
             30, "both sidecars reconnected")
    mesh.wait_synced()
    wait_for(mesh.same_config, 20, "both replicas on one config after the restart")
    before = mesh.counters()
    assert before.get("pushed") == 0, before
    mesh.apply_synced(reviews_split(70, 30))
    wait_for(mesh.same_config, 20, "both replicas on the route after the restart")
    after = mesh.counters()
    assert grew(before, after, "pushed_deltas") == 1 and grew(before, after, "pushed") == 2
    assert 0 < grew(before, after, "pushed_bytes_delta") \
        < grew(before, after, "pushed_bytes_full") / 4
    assert grew(before, after, "delta_fallbacks") == 0
    mesh.apply_synced(reviews_split(60, 40))
    wait_for(mesh.same_config, 20, "both replicas on the next route")
    assert grew(after, mesh.counters(), "pushed_deltas") == 1

"""Delta pushes in process: pieces rebuild the snapshot's bytes, a delta rebuilds the target
from its base, a proxy NACKs one it cannot build and the control plane answers with the full
snapshot, proxies that did not ask get full ones, a new stream starts full, and at most a
bounded number of full snapshots are unanswered at once."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from meshctl.api import mesh_pb2
from meshctl.api.delta import DeltaError, apply_delta
from meshctl.api.resources import load_documents
from meshctl.controlplane.deltas import Deltas
from meshctl.controlplane.jsonpieces import Pieces, dumps
from meshctl.controlplane.memstore import MemStore
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import ProxyInfo, Registry
from meshctl.controlplane.snapshots import BuiltSnapshot, SnapshotBuilder
from proxy.__main__ import build_parser, options_from_args
from proxy.agent import ControlPlaneAgent
from proxy.server import ProxyServer
from tests.resources import destination_policy, documents, route
from tests.test_controlplane_reconcile import FakeClock


def reviews_split(v1: int, v2: int) -> str:
    """The reviews Route (v1 and v2 by weight) and its DestinationPolicy, in `default`."""
    return documents(route("reviews", {"v1": v1, "v2": v2}, namespace="default"),
                     destination_policy("reviews", namespace="default"))


def endpoint(i: int, service: str = "", version: str = "v1") -> ProxyInfo:
    return ProxyInfo(name=f"p{i}", service=service or f"svc-{i % 7}",
                     labels={"version": version}, inbound=f"127.0.0.1:{20000 + i}", ready=True)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.choice(["dict", "list", "str", "int", "float", "bool", "none"] if depth < 4
                      else ["str", "int", "float", "bool", "none"])
    if kind == "dict":
        return {rng.choice(["a", "b", "é", "k\n", "z", "1"]) + str(rng.randint(0, 9)):
                random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {"str": lambda: rng.choice(["", "x", "ü\"\\", "127.0.0.1:80"]),
            "int": lambda: rng.randint(-5, 10**12), "float": lambda: rng.random() * 100,
            "bool": lambda: rng.random() < 0.5, "none": lambda: None}[kind]()


@pytest.mark.parametrize("seed", range(20))
def test_pieces_join_to_the_json_the_builder_writes(seed: int) -> None:
    """Whatever the value and depth, the pieces concatenated are dumps' bytes."""
    rng = random.Random(seed)
    for depth in range(5):
        value = random_json(rng)
        writer = Pieces()
        writer.value(value, depth)
        assert b"".join(writer.finish()) == dumps(value).encode(), (value, depth)


def test_a_route_change_and_a_new_endpoint_are_small_deltas() -> None:
    """At 300 endpoints, a re-weighted route or one more endpoint costs a few hundred bytes,
    and the delta rebuilds the new snapshot byte for byte."""
    proxies = [endpoint(i) for i in range(300)]
    before = SnapshotBuilder(load_documents(reviews_split(90, 10), "r.yaml"),
                             proxies).build(proxies[0])
    changes = {
        "route": SnapshotBuilder(load_documents(reviews_split(50, 50), "r.yaml"), proxies),
        "endpoint": SnapshotBuilder(load_documents(reviews_split(90, 10), "r.yaml"),
                                    [*proxies, endpoint(300)]),
        "gone": SnapshotBuilder(load_documents(reviews_split(90, 10), "r.yaml"), proxies[1:]),
    }
    for what, builder in changes.items():
        after = builder.build(proxies[0])
        splices = Deltas().get(before, after)
        assert splices is not None, what
        message = mesh_pb2.ConfigMessage(version=after.version, base_version=before.version,
                                         delta=splices)
        assert message.ByteSize() < 400 < len(after.data) // 40, what
        assert apply_delta(before.version, before.data, message) == after.data, what


def test_a_delta_bigger_than_the_snapshot_is_not_sent() -> None:
    """Nothing in common: the full snapshot goes instead."""
    a = BuiltSnapshot("a", b'{"x":1}', (b'{"x":1}',), b"")
    b = BuiltSnapshot("b", b'{"y":"' + b"q" * 40 + b'"}', (b'{"y":"' + b"q" * 40 + b'"}',), b"")
    assert Deltas().get(a, b) is None


def test_apply_delta_refuses_what_it_cannot_check() -> None:
    """Another base, a result with another hash, a range beyond the base: DeltaError."""
    base = b'{"routes":[]}'
    good = mesh_pb2.ConfigMessage(version="", base_version="v1", delta=[
        mesh_pb2.Splice(offset=0, length=len(base))])
    import hashlib
    good.version = hashlib.sha256(base).hexdigest()[:12]
    assert apply_delta("v1", base, good) == base
    with pytest.raises(DeltaError, match="not the applied config"):
        apply_delta("v0", base, good)
    with pytest.raises(DeltaError, match="not the applied config"):
        apply_delta("", b"", good)
    wrong = mesh_pb2.ConfigMessage(version=good.version, base_version="v1",
                                   delta=[mesh_pb2.Splice(data=b'{"routes":[1]}')])
    with pytest.raises(DeltaError, match="hashes to"):
        apply_delta("v1", base, wrong)
    beyond = mesh_pb2.ConfigMessage(version=good.version, base_version="v1",
                                    delta=[mesh_pb2.Splice(offset=5, length=len(base))])
    with pytest.raises(DeltaError, match="beyond the base"):
        apply_delta("v1", base, beyond)


# -- the proxy's side --------------------------------------------------------------------------
ARGS = ["--control-plane", "127.0.0.1:1", "--service", "reviews", "--labels", "version=v2",
        "--inbound", "127.0.0.1:9083"]


async def test_the_proxy_nacks_a_delta_it_cannot_build_and_keeps_its_config() -> None:
    """The agent says it takes deltas; it applies a good one; a corrupted one (another hash)
    or one on a base it does not run is NACKed and its config stays; a full one then
    applies."""
    args = build_parser().parse_args(ARGS)
    server = ProxyServer(options_from_args(args))
    agent = ControlPlaneAgent(server, args)
    assert agent._register(True, "").deltas
    proxies = [endpoint(i, "ratings") for i in range(20)]
    builders = [SnapshotBuilder(load_documents(reviews_split(w, 100 - w), "r.yaml"), proxies)
                for w in (90, 50, 10)]
    one, two, three = (b.build(endpoint(99, "reviews", "v2")) for b in builders)
    answer = agent._apply(mesh_pb2.ConfigMessage(version=one.version, nonce="1",
                                                 snapshot_json=one.data))
    assert answer.WhichOneof("kind") == "ack"

    def delta(base: BuiltSnapshot, target: BuiltSnapshot, nonce: str) -> mesh_pb2.ConfigMessage:
        return mesh_pb2.ConfigMessage(version=target.version, nonce=nonce,
                                      base_version=base.version,
                                      delta=Deltas().get(base, target))

    corrupted = delta(one, two, "2")
    corrupted.delta[-1].data = corrupted.delta[-1].data.replace(b"50", b"51") \
        if corrupted.delta[-1].data else b"}"
    for bad in (corrupted, delta(two, three, "3")):  # another hash; a base it never ran
        answer = agent._apply(bad)
        assert answer.WhichOneof("kind") == "nack" and answer.nack.nonce == bad.nonce
        assert answer.nack.error.startswith("delta:"), answer.nack.error
        assert server.snapshot is not None and server.snapshot.version == one.version
    answer = agent._apply(delta(one, two, "4"))
    assert answer.WhichOneof("kind") == "ack" and server.snapshot.version == two.version
    weights = [b.weight for b in server.snapshot.routes["reviews"].rules[0].backends]
    assert weights == [50, 50]
    answer = agent._apply(mesh_pb2.ConfigMessage(version=three.version, nonce="5",
                                                 snapshot_json=three.data))
    assert answer.WhichOneof("kind") == "ack" and server.snapshot.version == three.version


# -- the control plane's side ------------------------------------------------------------------
class Stream:
    """A proxy's stream as the reconciler sees it: what it was pushed, answered by the test."""

    def __init__(self, rec: Reconciler, name: str, deltas: bool = True) -> None:
        self.rec, self.name = rec, name
        self.messages: list[mesh_pb2.ConfigMessage] = []
        self.running: tuple[str, bytes] = ("", b"")
        rec.registry.register(endpoint(int(name[1:])) if name[1:].isdigit()
                              else ProxyInfo(name=name, service="web",
                                             inbound="127.0.0.1:1", ready=True))
        rec.attach(name, self.messages.append, deltas=deltas)

    def ack(self) -> mesh_pb2.ConfigMessage:
        """Apply the last push as the proxy does and ACK it."""
        message = self.messages[-1]
        data = (apply_delta(*self.running, message) if message.base_version
                else message.snapshot_json)
        self.running = (message.version, data)
        self.rec.ack(self.name, message.version, message.nonce)
        return message

    def nack(self, error: str = "delta: the result hashes to 000, not 111") -> None:
        message = self.messages[-1]
        self.rec.nack(self.name, message.version, message.nonce, error)


async def reconciler(**kwargs: Any) -> Reconciler:
    store = MemStore()
    for r in load_documents(reviews_split(90, 10), "r.yaml"):
        await store.create(r)
    clock = FakeClock()
    return Reconciler(store, Registry(clock=clock), clock=clock, sleep=clock.sleep, **kwargs)


async def reweigh(rec: Reconciler, v1: int) -> None:
    for r in load_documents(reviews_split(v1, 100 - v1), "r.yaml"):
        await rec.store.update(r)
    await rec.reconcile_pass()


async def test_a_nacked_delta_is_answered_with_the_full_snapshot() -> None:
    """The first push is full; a change then goes as a delta; NACKed, the same version goes
    out in full at once (one in flight, no NACK shown: nothing was refused), and once that
    is ACKed the next change is a delta again."""
    rec = await reconciler()
    stream = Stream(rec, "p1")
    await rec.reconcile_pass()
    assert not stream.ack().base_version
    await reweigh(rec, 50)
    delta = stream.messages[-1]
    assert delta.base_version and not delta.snapshot_json
    stream.nack()
    full = stream.messages[-1]
    assert len(stream.messages) == 3 and not full.base_version
    assert full.version == delta.version and full.nonce != delta.nonce
    assert rec.states["p1"].nack is None and rec.counters.nacks == 0
    assert rec.counters.delta_fallbacks == 1 and rec.lagging(rec.revision) == ["p1"]
    stream.ack()
    assert rec.lagging(rec.revision) == [] and rec.states["p1"].synced
    await reweigh(rec, 10)
    assert stream.ack().base_version and rec.lagging(rec.revision) == []


async def test_a_full_snapshot_refused_after_a_delta_is_a_nack() -> None:
    """A change the proxy refuses (not the delta: the config) shows as its NACK once the
    full snapshot is refused too."""
    rec = await reconciler()
    stream = Stream(rec, "p1")
    await rec.reconcile_pass()
    stream.ack()
    await reweigh(rec, 50)
    stream.nack("routes: no")
    stream.nack("routes: no")
    assert rec.states["p1"].nack == "routes: no" and rec.counters.nacks == 1
    assert len(stream.messages) == 3


async def test_a_proxy_that_did_not_ask_gets_full_snapshots_and_a_new_stream_starts_full() -> None:
    """Without Register.deltas every push is full; a reconnecting proxy (a new stream,
    whatever it says it runs) is sent its first snapshot in full, then deltas."""
    rec = await reconciler()
    old, new = Stream(rec, "p1", deltas=False), Stream(rec, "p2")
    await rec.reconcile_pass()
    old.ack(), new.ack()
    await reweigh(rec, 50)
    assert not old.ack().base_version and new.ack().base_version
    version = new.running[0]
    rec.detach("p2", new.messages.append)  # the stream breaks; the proxy comes back
    again = Stream(rec, "p2")
    again.running = new.running
    rec.attach("p2", again.messages.append, version, deltas=True)
    await reweigh(rec, 10)
    first = again.ack()
    assert not first.base_version and first.snapshot_json
    await reweigh(rec, 30)
    assert again.ack().base_version
    old.ack()  # the change of 10 (30 waited for this answer: one in flight)
    await rec.reconcile_pass()
    assert not old.ack().base_version and rec.lagging(rec.revision) == []
    assert rec.counters.pushed_deltas == 2
    counters = rec.counters  # per message, a delta is a fraction of a full snapshot
    fulls = counters.pushed - counters.pushed_deltas
    assert 0 < counters.pushed_bytes_delta / 2 < counters.pushed_bytes_full / fulls / 4


async def test_at_most_the_bound_of_full_snapshots_are_unanswered() -> None:
    """Five proxies connect at once with room for two full snapshots: two go out, each answer
    lets the next one go without another pass, and all end synced; deltas never wait."""
    rec = await reconciler(fulls_in_flight=2)
    streams = [Stream(rec, f"p{i}") for i in range(5)]
    await rec.reconcile_pass()
    assert [len(s.messages) for s in streams] == [1, 1, 0, 0, 0]
    assert sorted(rec.lagging(rec.revision)) == [f"p{i}" for i in range(5)]
    streams[0].ack()
    assert [len(s.messages) for s in streams] == [1, 1, 1, 0, 0]
    for s in streams[1:4]:
        s.ack()
    streams[4].ack()
    assert rec.lagging(rec.revision) == []
    await reweigh(rec, 50)  # five deltas at once: none waits
    assert all(s.ack().base_version for s in streams)
    assert rec.lagging(rec.revision) == []


async def test_a_full_snapshot_waiting_in_line_is_not_sent_stale() -> None:
    """A change while a proxy waits for room replaces what it waits with; the snapshot it
    finally gets is the latest, and counts for the store's revision."""
    rec = await reconciler(fulls_in_flight=1)
    first, second = Stream(rec, "p1"), Stream(rec, "p2")
    await rec.reconcile_pass()
    assert len(second.messages) == 0
    await reweigh(rec, 50)  # p1's answer is due: its change waits; p2 still waits in line
    first.ack()  # room: p2's full goes out (the latest), p1 is marked for the change
    assert len(second.messages) == 1
    assert b'"weight":50' in second.ack().snapshot_json
    await rec.reconcile_pass()
    first.ack()
    assert rec.lagging(rec.revision) == [] and json.loads(first.running[1])


async def test_a_reconnected_proxy_running_the_current_snapshot_gets_deltas_at_once() -> None:
    """A restarted control plane rebuilds, for a proxy back on a new stream, exactly what its
    Register says it runs: nothing is pushed, and that snapshot is the base of the proxy's
    next change, which goes as a delta (Envoy's initial_resource_versions). A proxy that says
    it runs something else is sent the change in full."""
    rec = await reconciler()
    same, other = Stream(rec, "p1"), Stream(rec, "p2")
    await rec.reconcile_pass()
    same.ack(), other.ack()
    version, running = same.running
    pushed = rec.counters.pushed
    for stream, says in ((same, version), (other, "0123456789ab")):
        rec.detach(stream.name, stream.messages.append)  # the stream breaks; the proxy is back
        stream.messages.clear()
        rec.attach(stream.name, stream.messages.append, says, deltas=True)
    await rec.reconcile_pass()
    assert not same.messages and rec.counters.pushed == pushed + 1  # only `other` was pushed
    other.ack()
    await reweigh(rec, 40)
    first = same.ack()
    assert first.base_version == version and not first.snapshot_json
    assert apply_delta(version, running, first) == same.running[1]
    assert rec.counters.delta_fallbacks == 0

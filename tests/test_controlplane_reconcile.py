"""Reconciler debounce and registry grace, on a fake clock."""

from __future__ import annotations

from typing import Any

import pytest

from meshctl.controlplane.memstore import MemStore
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import ProxyInfo, Registry


class FakeClock:
    """Time that only moves when a sleep is awaited or ``advance`` is called."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []
        self.on_sleep: list[object] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds
        if self.on_sleep:
            self.on_sleep.pop(0)()  # type: ignore[operator]


def reconciler(clock: FakeClock) -> Reconciler:
    return Reconciler(MemStore(), Registry(clock=clock), quiet=0.1, cap=1.0, clock=clock,
                      sleep=clock.sleep)


async def test_debounce_waits_for_a_quiet_period() -> None:
    """A single mark is reconciled after 100 ms of quiet."""
    clock = FakeClock()
    rec = reconciler(clock)
    rec.mark_all()
    await rec.debounce()
    assert clock.sleeps == [0.1]


async def test_debounce_restarts_on_new_marks_but_is_capped() -> None:
    """Marks every 90 ms keep extending the wait, but never past 1 s after the first."""
    clock = FakeClock()
    rec = reconciler(clock)
    rec.mark_all()
    clock.on_sleep = [rec.mark_all] * 100  # a new mark right after every sleep
    await rec.debounce()
    assert abs(sum(clock.sleeps) - 1.0) < 1e-9
    assert max(clock.sleeps) <= 0.1 and clock.sleeps[:10] == [0.1] * 10


def test_registry_keeps_a_dropped_endpoint_for_the_grace_then_removes_it() -> None:
    """A disconnected sidecar stays an endpoint for the grace, then goes and triggers a change."""
    clock = FakeClock()
    changes: list[int] = []
    registry = Registry(grace=2.0, clock=clock, on_change=lambda: changes.append(1))
    info = ProxyInfo(name="r1", service="reviews", inbound="127.0.0.1:1", ready=True)
    session = registry.register(info)
    assert [p.name for p in registry.endpoints()] == ["r1"] and len(changes) == 1
    registry.disconnect("r1", session)
    clock.now += 1.9
    assert registry.expire() is not None and registry.endpoints() and len(changes) == 1
    clock.now += 0.2
    assert registry.expire() is None and registry.endpoints() == [] and len(changes) == 2


def test_registry_readiness_and_stale_sessions() -> None:
    """Only ready sidecars are endpoints; a replaced stream's disconnect is ignored."""
    clock = FakeClock()
    registry = Registry(grace=0.0, clock=clock)
    old = registry.register(ProxyInfo(name="r1", service="reviews", inbound="127.0.0.1:1"))
    assert registry.endpoints() == []
    new = registry.register(ProxyInfo(name="r1", service="reviews", inbound="127.0.0.1:1"))
    registry.report("r1", new, ready=True, cert_expiry="")
    registry.disconnect("r1", old)
    registry.expire()
    assert [p.name for p in registry.endpoints()] == ["r1"] and registry.connected("r1")


async def test_one_snapshot_in_flight_per_proxy() -> None:
    """A change while a push is unanswered waits; the proxy's answer releases the newer one."""
    from meshctl.api.resources import parse_document

    clock = FakeClock()
    store = MemStore()
    registry = Registry(clock=clock)
    rec = Reconciler(store, registry, quiet=0.1, cap=1.0, clock=clock, sleep=clock.sleep)
    sent: list[tuple[str, str]] = []
    registry.register(ProxyInfo(name="pp", service="productpage", inbound="127.0.0.1:1",
                                ready=True))
    rec.attach("pp", lambda message: sent.append((message.version, message.nonce)))
    await rec.reconcile_pass()
    assert len(sent) == 1
    mesh = {"apiVersion": "ami.mesh/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "default"}, "spec": {"accessLog": True}}
    await store.create(parse_document(mesh))
    rec.mark_all()
    await rec.reconcile_pass()
    assert len(sent) == 1, "the first push is still unanswered"
    rec.ack("pp", *sent[0])
    await rec.reconcile_pass()
    assert len(sent) == 2 and sent[1][0] != sent[0][0]
    rec.ack("pp", *sent[1])
    assert rec.states["pp"].synced


def test_registry_restore_lists_known_proxies_until_they_reconnect_or_the_hold_ends() -> None:
    """Restored proxies are endpoints (disconnected) for the hold; a reconnect takes the entry."""
    clock = FakeClock()
    registry = Registry(grace=2.0, clock=clock)
    r1 = ProxyInfo(name="r1", service="reviews", inbound="127.0.0.1:1", ready=True)
    r2 = ProxyInfo(name="r2", service="reviews", inbound="127.0.0.1:2", ready=True)
    registry.restore([r1, r2], hold=15.0)
    assert registry.endpoints() == [r1, r2] and not registry.connected("r1")
    registry.register(r1)
    clock.now += 14.9
    assert registry.expire() is not None and registry.endpoints() == [r1, r2]
    clock.now += 0.2
    registry.expire()
    assert registry.endpoints() == [r1] and registry.connected("r1")


async def test_a_large_pass_yields_to_the_streams_and_still_reaches_every_proxy() -> None:
    """A pass over many proxies returns to the event loop between batches (the streams write
    what is queued, bounding peak memory) and still sends each proxy exactly one snapshot."""
    import asyncio

    clock = FakeClock()
    registry = Registry(clock=clock)
    rec = Reconciler(MemStore(), registry, quiet=0.1, cap=1.0, clock=clock, sleep=clock.sleep,
                     fulls_in_flight=250)  # (bounding them is test_controlplane_deltas's)
    sent: list[str] = []
    for i in range(250):
        name = f"p{i:03d}"
        registry.register(ProxyInfo(name=name, service="svc", inbound=f"127.0.0.1:{1000 + i}",
                                    ready=True))
        rec.attach(name, lambda message, name=name: sent.append(name))
    seen_mid_pass: list[int] = []

    async def observer() -> None:
        await asyncio.sleep(0)
        seen_mid_pass.append(len(sent))

    watcher = asyncio.create_task(observer())
    await rec.reconcile_pass()
    await watcher
    assert sorted(sent) == sorted(rec.states) and len(sent) == 250
    assert seen_mid_pass and 0 < seen_mid_pass[0] < 250


async def _nacked_change(clock: FakeClock | None = None,
                         ) -> tuple[Reconciler, MemStore, list[tuple[str, str]]]:
    """A proxy that ACKed its first snapshot and was then pushed a MeshConfig change (its
    write noted, as the store's watch notes it: the reconciler's ``revision``)."""
    from meshctl.api.resources import parse_document

    clock = clock or FakeClock()
    store = MemStore()
    registry = Registry(clock=clock)
    rec = Reconciler(store, registry, quiet=0.1, cap=1.0, clock=clock, sleep=clock.sleep)
    sent: list[tuple[str, str]] = []
    registry.register(ProxyInfo(name="pp", service="productpage", inbound="127.0.0.1:1",
                                ready=True))
    rec.attach("pp", lambda message: sent.append((message.version, message.nonce)))
    await rec.reconcile_pass()
    rec.ack("pp", *sent[0])
    mesh = {"apiVersion": "ami.mesh/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "default"}, "spec": {"accessLog": True}}
    rec.note_write((await store.create(parse_document(mesh))).resource_version)
    rec.mark_all()
    await rec.reconcile_pass()
    assert len(sent) == 2
    return rec, store, sent


async def test_reverting_a_nacked_change_clears_the_nack() -> None:
    """Once a NACKed change is reverted the proxy is synced on what it runs and shows no NACK."""
    from meshctl.controlplane.proxystatus import proxy_json

    rec, store, sent = await _nacked_change()
    rec.nack("pp", *sent[1], "mesh: bad")
    assert rec.states["pp"].nack == "mesh: bad" and not rec.states["pp"].synced
    await store.delete("MeshConfig", "default", "default")
    rec.mark_all()
    await rec.reconcile_pass()
    state = rec.states["pp"]
    assert len(sent) == 2, "the proxy already runs the reverted config: nothing to push"
    assert state.synced and state.nack is None
    info = rec.registry.get("pp")
    assert info is not None and proxy_json(info, state, True)["nack"] is None


async def test_a_nack_of_a_change_reverted_in_flight_is_not_kept() -> None:
    """A NACK arriving after its change was reverted leaves the proxy synced without a NACK."""
    rec, store, sent = await _nacked_change()
    await store.delete("MeshConfig", "default", "default")
    rec.mark_all()
    await rec.reconcile_pass()
    rec.nack("pp", *sent[1], "mesh: bad")
    state = rec.states["pp"]
    assert state.synced and state.nack is None and rec.counters.nacks == 1


async def test_a_change_reverted_in_flight_and_acked_is_undone() -> None:
    """If the proxy ACKs a push whose change was reverted meanwhile, the revert is pushed."""
    rec, store, sent = await _nacked_change()
    await store.delete("MeshConfig", "default", "default")
    rec.mark_all()
    await rec.reconcile_pass()
    assert len(sent) == 2, "nothing new to send while the proxy may still refuse the change"
    rec.ack("pp", *sent[1])
    await rec.reconcile_pass()
    assert len(sent) == 3 and sent[2][0] == sent[0][0]
    rec.ack("pp", *sent[2])
    assert rec.states["pp"].synced


async def test_a_proxy_is_not_synced_while_a_change_waits_to_be_computed_for_it() -> None:
    """An ACK of the last snapshot does not make a proxy synced while a registry change (here
    another sidecar's app starting to serve) is marked but not yet computed into its snapshot:
    `meshctl demo up` and `proxy-status` would otherwise say SYNCED before the endpoint is in."""
    from meshctl.controlplane.proxystatus import proxies_json

    clock = FakeClock()
    registry = Registry(clock=clock)
    rec = Reconciler(MemStore(), registry, quiet=0.1, cap=1.0, clock=clock, sleep=clock.sleep)
    registry.on_change = rec.inputs_changed
    sent: list[tuple[str, str]] = []
    registry.register(ProxyInfo(name="pp", service="productpage", inbound="127.0.0.1:1",
                                ready=True))
    rec.attach("pp", lambda message: sent.append((message.version, message.nonce)))
    await rec.reconcile_pass()
    rec.ack("pp", *sent[-1])

    def synced() -> bool:
        return bool(proxies_json(registry, rec)["proxies"][0]["synced"])

    assert synced()
    session = registry.register(ProxyInfo(name="r1", service="reviews", inbound="127.0.0.1:2",
                                          ready=True, app_health="not_serving"))
    assert not synced()  # marked, not computed
    await rec.reconcile_pass()
    assert not synced()  # computed and pushed (reviews listed without endpoints), not ACKed
    rec.ack("pp", *sent[-1])
    assert synced()
    registry.report("r1", session, ready=True, cert_expiry="", app_health="serving")
    assert not synced()
    await rec.reconcile_pass()
    rec.ack("pp", *sent[-1])
    assert synced() and len(sent) == 3


async def test_a_certificate_report_leaves_every_proxy_synced() -> None:
    """A Status that changes only what no snapshot reads (a renewed certificate's dates) is
    saved and shown but marks no proxy pending: proxy-status and `describe` said STALE for every
    proxy in the mesh after each renewal, until a pass found the change reached nobody."""
    from meshctl.controlplane.proxystatus import proxies_json

    clock = FakeClock()
    registry = Registry(clock=clock)
    rec = Reconciler(MemStore(), registry, quiet=0.1, cap=1.0, clock=clock, sleep=clock.sleep)
    registry.on_change = rec.inputs_changed
    sent: list[tuple[str, str]] = []
    session = registry.register(ProxyInfo(name="pp", service="productpage",
                                          inbound="127.0.0.1:1", ready=True))
    rec.attach("pp", lambda message: sent.append((message.version, message.nonce)))
    await rec.reconcile_pass()
    rec.ack("pp", *sent[-1])
    revision = registry.revision

    registry.report("pp", session, ready=True, cert_expiry="2026-11-29T00:00:00Z",
                    cert_issued="2026-11-28T00:00:00Z", gateway_cert=False)
    listed = proxies_json(registry, rec)["proxies"][0]
    assert listed["synced"] and listed["certExpiry"] == "2026-11-29T00:00:00Z"
    assert registry.revision == revision + 1  # the state file still saves it
    registry.report("pp", session, ready=False, cert_expiry="2026-11-29T00:00:00Z",
                    cert_issued="2026-11-28T00:00:00Z")
    assert not proxies_json(registry, rec)["proxies"][0]["synced"]  # readiness is read


async def test_convergence_runs_from_the_write_to_the_last_ack_not_from_the_wait() -> None:
    """`meshctl shift` asks /api/v1/sync after its write; if the proxies ACKed before the ask,
    the wait is 0 ms but the change still took from the write to the last ACK to arrive."""
    from meshctl.api.resources import parse_document

    clock = FakeClock()
    store = MemStore()
    registry = Registry(clock=clock)
    rec = Reconciler(store, registry, quiet=0.1, cap=1.0, clock=clock, sleep=clock.sleep)
    sent: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    for name in sent:
        registry.register(ProxyInfo(name=name, service=name, inbound="127.0.0.1:1", ready=True))
        rec.attach(name, lambda m, n=name: sent[n].append((m.version, m.nonce)))
    await rec.reconcile_pass()
    for name, pushes in sent.items():
        rec.ack(name, *pushes[-1])
    mesh = {"apiVersion": "ami.mesh/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "default"}, "spec": {"accessLog": True}}
    revision = (await store.create(parse_document(mesh))).resource_version
    rec.note_write(revision)  # what the store watch does as the event arrives
    clock.now += 0.1  # the debounce
    rec.mark_all()
    await rec.reconcile_pass()
    clock.now += 0.05
    rec.ack("a", *sent["a"][-1])
    clock.now += 0.2
    rec.ack("b", *sent["b"][-1])
    clock.now += 5.0  # the client asks late
    assert await rec.wait_synced(revision, timeout=1.0) == []
    converged = rec.converged_seconds(revision)
    assert converged is not None and abs(converged - 0.35) < 1e-9
    assert rec.converged_seconds(revision + 100) is None  # a write it never saw


async def test_convergence_of_a_write_is_not_moved_by_later_writes_or_new_proxies() -> None:
    """`meshctl shift reviews 100/0` with the weights unchanged asks /api/v1/sync about the
    route's own, older revision: its figure stays that write's (0.35 s), not the time to the
    newest ACK of an unrelated write since, nor to a proxy that registered afterwards."""
    from meshctl.api.resources import parse_document

    clock = FakeClock()
    store = MemStore()
    registry = Registry(clock=clock)
    rec = Reconciler(store, registry, quiet=0.1, cap=1.0, clock=clock, sleep=clock.sleep)
    sent: dict[str, list[tuple[str, str]]] = {"a": [], "b": [], "c": []}

    def attach(name: str) -> None:
        registry.register(ProxyInfo(name=name, service=name, inbound="127.0.0.1:1", ready=True))
        rec.attach(name, lambda m, n=name: sent[n].append((m.version, m.nonce)))

    async def write(log: bool) -> int:
        mesh = {"apiVersion": "ami.mesh/v1alpha1", "kind": "MeshConfig",
                "metadata": {"name": "default"}, "spec": {"accessLog": log}}
        existing = await store.get("MeshConfig", "default", "default")
        resource = parse_document(mesh)
        stored = (await store.create(resource) if existing is None
                  else await store.update(resource, str(existing.resource_version)))
        rec.note_write(stored.resource_version)
        return stored.resource_version

    for name in ("a", "b"):
        attach(name)
    await rec.reconcile_pass()
    for name in ("a", "b"):
        rec.ack(name, *sent[name][-1])
    first = await write(True)
    clock.now += 0.1
    rec.mark_all()
    await rec.reconcile_pass()
    clock.now += 0.05
    rec.ack("a", *sent["a"][-1])
    clock.now += 0.2
    rec.ack("b", *sent["b"][-1])
    assert rec.converged_seconds(first) == pytest.approx(0.35)

    clock.now += 40.0  # much later: an unrelated write, ACKed slowly, and a new proxy
    second = await write(False)
    clock.now += 0.1
    rec.mark_all()
    await rec.reconcile_pass()
    clock.now += 6.0
    for name in ("a", "b"):
        rec.ack(name, *sent[name][-1])
    attach("c")
    clock.now += 0.1
    await rec.reconcile_pass()
    clock.now += 0.1
    for name in ("a", "b", "c"):  # (a and b call c: its endpoint changed their snapshots)
        rec.ack(name, *sent[name][-1])
    assert await rec.wait_synced(first, timeout=1.0) == []
    assert rec.converged_seconds(first) == pytest.approx(0.35)
    assert rec.converged_seconds(second) == pytest.approx(6.1)  # its own time, c not counted


async def test_the_timeline_of_a_write_names_its_pass_pushes_writes_and_acks() -> None:
    """A write's phases, from the write: the pass that read it started after the debounce,
    queued its 2 pushes, the streams wrote them, the last ACK came; a pass that reads no new
    write times nothing, and a write never seen has no timeline."""
    from meshctl.api.resources import parse_document

    clock = FakeClock()
    store = MemStore()
    registry = Registry(clock=clock)
    rec = Reconciler(store, registry, quiet=0.1, cap=1.0, clock=clock, sleep=clock.sleep)
    sent: dict[str, list[tuple[str, str]]] = {"a": [], "b": []}
    for name in sent:
        registry.register(ProxyInfo(name=name, service=name, inbound="127.0.0.1:1", ready=True))
        rec.attach(name, lambda m, n=name: sent[n].append((m.version, m.nonce)))
    await rec.reconcile_pass()
    for name, pushes in sent.items():
        rec.ack(name, *pushes[-1])
    mesh = {"apiVersion": "ami.mesh/v1alpha1", "kind": "MeshConfig",
            "metadata": {"name": "default"}, "spec": {"accessLog": True}}
    revision = (await store.create(parse_document(mesh))).resource_version
    rec.note_write(revision)
    clock.now += 0.1  # the debounce
    rec.mark_all()
    await rec.reconcile_pass()
    assert rec.timeline.phases_ms(revision) == {"pushes": 2, "pass_started": 100.0,
                                                "queued": 100.0}
    clock.now += 0.02
    rec.written("a", sent["a"][-1][1])
    clock.now += 0.01
    rec.written("b", sent["b"][-1][1])
    rec.written("b", "0")  # a superseded push's write is not this pass's
    clock.now += 0.05
    rec.ack("a", *sent["a"][-1])
    clock.now += 0.2
    rec.ack("b", *sent["b"][-1])
    phases = rec.timeline.phases_ms(revision)
    assert phases == {"pushes": 2, "pass_started": 100.0, "queued": 100.0,
                      "last_written": 130.0, "last_acked": 380.0}, phases
    rec.mark_all()
    await rec.reconcile_pass()  # reads no new write: the timeline of the last stays
    assert rec.timeline.phases_ms(revision) == phases
    assert rec.timeline.phases_ms(revision + 100) is None


async def test_a_sync_wait_checks_each_answer_once_not_every_laggard(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``wait_synced`` over 300 laggards answered one by one (each answer wakes it) re-checks
    only the proxy that answered: O(answers) checks in all, not O(answers x laggards); it
    still ends when the last one ACKs, and a proxy reconnecting rescans them all."""
    import asyncio

    from meshctl.controlplane import reconcile

    clock = FakeClock()
    registry = Registry(clock=clock)
    rec = Reconciler(MemStore(), registry, quiet=0.1, cap=1.0, clock=clock, sleep=clock.sleep,
                     fulls_in_flight=300)
    sent: dict[str, list[Any]] = {}
    for i in range(300):
        name = f"p{i:03d}"
        registry.register(ProxyInfo(name=name, service="svc", inbound=f"127.0.0.1:{1000 + i}",
                                    ready=True))
        rec.attach(name, lambda m, n=name: sent.setdefault(n, []).append(m))
    await rec.reconcile_pass()
    checks = 0
    real = reconcile._lags

    def counting(state: Any, revision: int) -> bool:
        nonlocal checks
        checks += 1
        return real(state, revision)

    monkeypatch.setattr(reconcile, "_lags", counting)
    assert len(sent) == 300
    waiter = asyncio.create_task(rec.wait_synced(rec.revision, timeout=30.0))
    await asyncio.sleep(0)
    checks = 0
    for name in sorted(sent)[:-1]:
        rec.ack(name, sent[name][-1].version, sent[name][-1].nonce)
        await asyncio.sleep(0)  # the waiter wakes after every answer
    assert not waiter.done()
    assert checks < 2 * len(sent)
    last = sorted(sent)[-1]
    rec.ack(last, sent[last][-1].version, sent[last][-1].nonce)
    assert await waiter == []


class TickingClock(FakeClock):
    """A clock that moves 1 ms on every reading (two readings are never the same moment)."""

    def __call__(self) -> float:
        self.now += 0.001
        return self.now


async def test_the_last_ack_phase_is_the_moment_of_convergence() -> None:
    """A write's ``last_acked`` phase and its ``converged_ms`` are the same ACK, read once: the
    phases never end after the convergence they explain (CI saw 106.9 > 106.8 when the ACK
    read the clock twice)."""
    rec, _, sent = await _nacked_change(TickingClock())
    revision = rec.revision
    rec.written("pp", sent[1][1])
    rec.ack("pp", *sent[1])
    phases = rec.timeline.phases_ms(revision)
    converged = rec.converged_seconds(revision)
    assert phases is not None and converged is not None, (phases, converged)
    assert phases["pass_started"] <= phases["queued"] <= phases["last_written"] \
        <= phases["last_acked"] == round(converged * 1000, 1), (phases, converged)

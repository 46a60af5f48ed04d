"""Registry changes reach only the proxies whose snapshots read them (meshctl.controlplane.reach):
after any sequence of registrations, readiness and health reports, renewals, departures and
gateways, with and without Sidecar scopes, every proxy's snapshot is what a full rebuild
gives, and the bytes each runs after applying what it was pushed (deltas included:
meshctl.controlplane.deltas) are byte for byte the full rebuild's; a certificate renewal
computes nothing; an unreached proxy stays synced."""

from __future__ import annotations

import random
from dataclasses import fields, replace
from typing import Any

import pytest

from meshctl.api import mesh_pb2
from meshctl.api.delta import apply_delta
from meshctl.api.resources import load_documents
from meshctl.controlplane.memstore import MemStore
from meshctl.controlplane.reach import RegistryFacts
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import SNAPSHOT_UNREAD, ProxyInfo, Registry
from meshctl.controlplane.snapshots import SnapshotBuilder
from tests.test_controlplane_reconcile import FakeClock

# a's proxies (but a/web's canary) see only a; b's see everything.
SCOPES = """\
apiVersion: ami.mesh/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: a}
spec: {egress: [{hosts: ["./*"]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: Sidecar
metadata: {name: canary, namespace: a}
spec: {workloadSelector: {labels: {track: canary}}, egress: [{hosts: ["*/*"]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: PeerAuthentication
metadata: {name: api-ports, namespace: b}
spec: {selector: {service: api}, mtls: {mode: STRICT}, portLevelMtls: {9443: {mode: DISABLE}}}
"""
UNREAD_VALUES: dict[str, Any] = {
    "cert_expiry": "2030-01-01T00:00:00Z", "cert_issued": "2029-01-01T00:00:00Z",
    "admin": "127.0.0.1:9999", "outbound": "127.0.0.1:15001", "admin_token": "t",
    "proxy_version": "9.9.9", "build": "cpython 3.99", "gateway_cert": True,
}


def sidecar(name: str, service: str, ns: str, port: int, **extra: Any) -> ProxyInfo:
    return ProxyInfo(**{"name": name, "service": service, "namespace": ns,
                        "labels": {"version": "v1"}, "inbound": f"127.0.0.1:{port}",
                        "ready": True, **extra})


class Pushed(list[str]):
    """The names of the proxies pushed to, in order, and what each runs: (version, bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.running: dict[str, tuple[str, bytes]] = {}
        self.deltas = 0


async def plane(clock: FakeClock) -> tuple[Reconciler, Registry, Pushed]:
    """A reconciler over SCOPES whose pushes are answered at once; the versions pushed."""
    store = MemStore()
    for r in load_documents(SCOPES, "scopes.yaml"):
        await store.create(r)
    registry = Registry(clock=clock, grace=1.0)
    return Reconciler(store, registry, clock=clock, sleep=clock.sleep), registry, Pushed()


def connect(rec: Reconciler, pushed: Pushed, info: ProxyInfo, deltas: bool = True) -> None:
    """Register ``info`` with a stream that applies each push as the proxy does (a delta on
    the bytes it runs, checked against its version) and ACKs it; ``deltas``: it says it
    takes them (else, as a proxy built before them, it fails the test on one)."""
    def send(message: mesh_pb2.ConfigMessage) -> None:
        pushed.append(info.name)
        if message.base_version:
            assert deltas, f"{info.name} did not ask for deltas"
            data = apply_delta(*pushed.running[info.name], message)
            pushed.deltas += 1
        else:
            data = message.snapshot_json
        pushed.running[info.name] = (message.version, data)
        rec.ack(info.name, message.version, message.nonce)
    rec.registry.register(info)
    rec.attach(info.name, send, deltas=deltas)


async def fresh(rec: Reconciler) -> dict[str, str]:
    """Each connected proxy's version in a full rebuild of the current state."""
    return {n: version for n, (version, _) in (await rebuilt(rec)).items()}


async def rebuilt(rec: Reconciler) -> dict[str, tuple[str, bytes]]:
    """Each connected proxy's snapshot (version, bytes) in a full rebuild of the state."""
    builder = SnapshotBuilder([o.resource for o in await rec.store.list()],
                              rec.registry.endpoints(), idle=rec.registry.idle_sidecars(),
                              gateways=rec.registry.gateways())
    return {n: (built.version, built.data) for n, s in rec.states.items()
            if s.sender is not None and (info := rec.registry.get(n)) is not None
            and (built := builder.build(info))}


async def runs_the_full_rebuild(rec: Reconciler, pushed: Pushed) -> bool:
    """Every connected proxy runs, byte for byte, what a full rebuild gives it."""
    expected = await rebuilt(rec)
    return {n: pushed.running.get(n) for n in expected} == expected


def test_unread_fields_reach_no_snapshot() -> None:
    """The fields a registry diff ignores change no snapshot, scoped or not, gateway or not,
    whether the proxy varied is an endpoint, an idle sidecar or a gateway."""
    docs = load_documents(SCOPES, "scopes.yaml")
    viewers = [sidecar("a1", "web", "a", 1), sidecar("b1", "web", "b", 2),
               replace(sidecar("g1", "edge", "b", 3), mode="gateway", trusted_gateway=True)]
    varied = [sidecar("api1", "api", "b", 4, app_port=9443),
              sidecar("api2", "api", "a", 5, ready=False), viewers[2]]

    def versions(proxies: list[ProxyInfo]) -> list[str]:
        every = viewers[:2] + proxies
        builder = SnapshotBuilder(docs, [p for p in every if p.is_endpoint],
                                  idle=[p for p in every if not p.is_endpoint
                                        and p.mode == "sidecar"],
                                  gateways=[p for p in every if p.mode == "gateway"])
        return [builder.build(v).version for v in viewers + proxies]

    assert set(SNAPSHOT_UNREAD) == set(UNREAD_VALUES)
    assert set(SNAPSHOT_UNREAD) < {f.name for f in fields(ProxyInfo)}
    for field, value in UNREAD_VALUES.items():
        assert versions([replace(p, **{field: value}) for p in varied]) == versions(varied)


def test_every_other_field_is_compared() -> None:
    """A change of any field outside SNAPSHOT_UNREAD makes its service's facts (or the
    mesh-wide ones) differ, so the proxies that list the service are recomputed."""
    base = sidecar("api1", "api", "b", 4)
    values = {"name": "api9", "service": "web", "namespace": "a", "labels": {"v": "2"},
              "inbound": "127.0.0.1:6", "mode": "gateway", "trusted_gateway": True,
              "ready": False, "app_health": "not_serving", "app_protocol": "tcp",
              "locality": "eu/a", "app_port": 9443}
    assert set(values) | set(SNAPSHOT_UNREAD) == {f.name for f in fields(ProxyInfo)}
    before = RegistryFacts.of([base], [], [])
    for field, value in values.items():
        after = RegistryFacts.of([replace(base, **{field: value})], [], [])
        assert after.changed(before) != set(), field


async def test_a_certificate_renewal_computes_nothing() -> None:
    """A Status report that only renews the certificate reaches no snapshot: the pass it
    triggers computes and pushes nothing, and nobody is pending meanwhile (proxy-status
    showed the whole mesh STALE after each renewal until a pass had compared)."""
    clock = FakeClock()
    rec, registry, pushed = await plane(clock)
    for i, (svc, ns) in enumerate([("web", "a"), ("api", "b"), ("web", "b")]):
        connect(rec, pushed, sidecar(f"p{i}", svc, ns, 100 + i))
    await rec.reconcile_pass()
    computed, pushes = rec.counters.computed + rec.counters.shared, len(pushed)
    session = registry._entries["p1"].session
    registry.report("p1", session, ready=True, cert_expiry="2030-01-01T00:00:00Z")
    assert not rec.pending("p0") and not rec.pending("p1")
    await rec.reconcile_pass()
    assert rec.counters.computed + rec.counters.shared == computed and len(pushed) == pushes
    assert not rec.pending("p0") and rec.lagging(rec.revision) == []


async def test_a_canary_reaches_no_proxy() -> None:
    """A Canary is the control plane's own (no snapshot reads it): creating, editing and
    deleting one computes no snapshot, rather than every proxy's."""
    clock = FakeClock()
    rec, _, pushed = await plane(clock)
    for i, (svc, ns) in enumerate([("web", "a"), ("api", "b")]):
        connect(rec, pushed, sidecar(f"p{i}", svc, ns, 100 + i))
    await rec.reconcile_pass()
    computed, pushes = rec.counters.computed + rec.counters.shared, len(pushed)
    canary = load_documents("apiVersion: ami.mesh/v1alpha1\nkind: Canary\nmetadata: "
                            "{name: web, namespace: a}\nspec: {service: web, stable: v1, "
                            "canary: v2}\n", "c.yaml")[0]
    stored = await rec.store.create(canary)
    await rec.reconcile_pass()
    await rec.store.delete(*stored.key)
    await rec.reconcile_pass()
    assert rec.counters.computed + rec.counters.shared == computed and len(pushed) == pushes
    assert await rec.wait_synced(rec.revision, timeout=0) == []


async def test_an_endpoint_change_reaches_only_the_proxies_that_list_its_service() -> None:
    """b/api turning unready recomputes b's proxies and a's canary (they list b), not a's
    scoped web, which stays synced for any wait on the store revision."""
    clock = FakeClock()
    rec, registry, pushed = await plane(clock)
    proxies = [sidecar("web-a", "web", "a", 1), sidecar("api-b", "api", "b", 2),
               sidecar("web-b", "web", "b", 3),
               replace(sidecar("canary-a", "web", "a", 4), labels={"track": "canary"})]
    for p in proxies:
        connect(rec, pushed, p)
    await rec.reconcile_pass()
    pushed.clear()
    session = registry._entries["api-b"].session
    registry.report("api-b", session, ready=False, cert_expiry="")
    await rec.reconcile_pass()
    assert sorted(pushed) == ["api-b", "canary-a", "web-b"]
    assert rec.counters.computed + rec.counters.shared == 4 + 3
    assert await rec.wait_synced(rec.revision, timeout=0) == []
    assert {n: s.latest_version for n, s in rec.states.items()} == await fresh(rec)


@pytest.mark.parametrize("seed", range(6))
async def test_no_snapshot_is_ever_stale(seed: int) -> None:
    """Random registry churn across two namespaces, one scoped: after each pass every
    connected proxy's latest snapshot is the one a full rebuild computes."""
    rng = random.Random(seed)
    clock = FakeClock()
    rec, registry, pushed = await plane(clock)
    services = [("web", "a"), ("api", "a"), ("web", "b"), ("api", "b"), ("db", "b"),
                ("solo", rng.choice("ab"))]
    sessions: dict[str, int] = {}
    for step in range(60):
        op = rng.choice(["join", "join", "report", "report", "renew", "leave", "expire",
                         "relabel", "gateway"])
        names = sorted(sessions)
        if op == "join" or not names:
            svc, ns = rng.choice(services)
            info = sidecar(f"{svc}-{ns}-{step}", svc, ns, 1000 + step,
                           locality=rng.choice(["", "eu/a"]),
                           app_protocol=rng.choice(["", "", "tcp"]))
            connect(rec, pushed, info, deltas=rng.random() < 0.8)
            sessions[info.name] = registry._entries[info.name].session
        elif op in ("report", "renew"):
            name = rng.choice(names)
            current = registry.get(name)
            assert current is not None
            registry.report(name, sessions[name],
                            ready=rng.random() < 0.7 if op == "report" else current.ready,
                            app_health=rng.choice(["", "serving", "not_serving"])
                            if op == "report" else current.app_health,
                            cert_expiry=f"2030-01-{step % 28 + 1:02d}T00:00:00Z")
        elif op == "leave":
            name = rng.choice(names)
            rec.detach(name, rec.states[name].sender)  # type: ignore[arg-type]
            registry.disconnect(name, sessions.pop(name))
        elif op == "expire":
            clock.now += 2.0
            registry.expire()
        elif op == "relabel":  # the same proxy reconnects with other labels
            name = rng.choice(names)
            current = registry.get(name)
            assert current is not None
            connect(rec, pushed, replace(current, labels={"track": rng.choice(["canary", "x"])}))
            sessions[name] = registry._entries[name].session
        else:
            info = replace(sidecar(f"gw-{step}", "edge", rng.choice("ab"), 3000 + step),
                           mode="gateway", trusted_gateway=rng.random() < 0.5, inbound="")
            connect(rec, pushed, info)
            sessions[info.name] = registry._entries[info.name].session
        await rec.reconcile_pass()
        expected = await fresh(rec)
        assert {n: rec.states[n].latest_version for n in expected} == expected, (seed, step, op)
        assert await runs_the_full_rebuild(rec, pushed), (seed, step, op)
    assert pushed.deltas > 0


def churn_doc(rng: random.Random) -> str:
    """One resource of a small vocabulary (few names, so most writes update one)."""
    ns = rng.choice("ab")
    head = "apiVersion: ami.mesh/v1alpha1\nkind: %s\nmetadata: {name: %s, namespace: " + ns + "}\n"
    n = rng.randint(1, 3)
    host = rng.choice(["api", "web", "db", "api.b", "api.a", "partner.io"])
    return rng.choice([
        head % ("Route", f"r{n}") + f"spec: {{host: {host}, rules: [{{fault: {{abort: "
        f"{{httpStatus: {rng.randint(500, 503)}, percent: 100}}}}, backends: [{{}}]}}]}}\n",
        head % ("DestinationPolicy", f"p{n}") + f"spec: {{host: {host}, rateLimit: "
        f"{{requestsPerSecond: {rng.randint(1, 9)}}}}}\n",
        head % ("ExternalService", f"e{n}") + "spec: {hosts: [partner.io], ports: [{number: "
        f"{rng.randint(80, 82)}, protocol: HTTP}}]}}\n",
        head % ("AuthorizationPolicy", f"z{n}") + "spec: {selector: {service: "
        f"{rng.choice(['api', 'web'])}}}, rules: [{{from: [{{services: [web]}}]}}]}}\n",
        head % ("Telemetry", "t") + "spec: {selector: {matchLabels: {track: canary}}, "
        f"accessLogging: [{{disabled: {rng.choice(['true', 'false'])}}}]}}\n",
        head % ("Sidecar", "default") + "spec: {egress: [{hosts: "
        f"{rng.choice([['./*'], ['./*', 'b/*'], ['*/partner.io', './*'], ['~/*']])}}}]}}\n",
        head % ("PeerAuthentication", "default") + "spec: {mtls: {mode: "
        f"{rng.choice(['STRICT', 'PERMISSIVE'])}}}}}\n",
        f"apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: h{n}, "
        f"namespace: {ns}}}\nspec: {{parentRefs: [{{kind: Service, name: "
        f"{rng.choice(['api', 'web'])}{rng.choice(['', ', namespace: a', ', namespace: b'])}}}], "
        f"rules: [{{backendRefs: [{{name: {rng.choice(['api', 'db'])}}}]}}]}}\n",
    ])


@pytest.mark.parametrize("seed", range(8))
async def test_no_snapshot_is_stale_after_resource_churn(seed: int) -> None:
    """Random writes and deletes of Routes, HTTPRoutes, policies, ExternalServices,
    authorization, Telemetry, Sidecars and PeerAuthentication (and a sidecar joining now and
    then): after each pass every connected proxy's snapshot is what a full rebuild gives, and
    every one, reached or not, runs a config that includes the store's revision (a shift's
    wait ends)."""
    rng = random.Random(seed)
    clock = FakeClock()
    rec, _, pushed = await plane(clock)
    for i, (svc, ns) in enumerate([("web", "a"), ("api", "a"), ("web", "b"), ("api", "b"),
                                   ("db", "b"), ("web", "a")]):
        connect(rec, pushed, sidecar(f"{svc}-{ns}-{i}", svc, ns, 100 + i))
    connect(rec, pushed, replace(sidecar("canary", "web", "a", 99), labels={"track": "canary"}))
    await rec.reconcile_pass()
    computed = []
    for step in range(50):
        if rng.random() < 0.1:
            svc, ns = rng.choice([("web", "a"), ("api", "b"), ("db", "a")])
            connect(rec, pushed, sidecar(f"{svc}-{ns}-j{step}", svc, ns, 2000 + step))
        else:
            [r] = load_documents(churn_doc(rng), "churn.yaml")
            if await rec.store.get(*r.key) is None:
                await rec.store.create(r)
            elif rng.random() < 0.3:
                await rec.store.delete(*r.key)
            else:
                await rec.store.update(r)
        before = rec.counters.computed + rec.counters.shared
        await rec.reconcile_pass()
        computed.append(rec.counters.computed + rec.counters.shared - before)
        expected = await fresh(rec)
        assert {n: rec.states[n].latest_version for n in expected} == expected, (seed, step)
        assert await runs_the_full_rebuild(rec, pushed), (seed, step)
        assert rec.lagging(rec.revision) == [], (seed, step)
    assert min(computed) < len(rec.states)  # some change reached fewer than every proxy
    assert pushed.deltas > 0

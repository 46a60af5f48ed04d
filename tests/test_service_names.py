"""Services of one name in several namespaces: how snapshots key them, how resources in a
namespace resolve a host, and how the proxy's name lookups (Host, CONNECT, TCP) find them."""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from typing import Any

from meshctl.api.resources import load_documents
from meshctl.controlplane.names import ServiceNames
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder
from proxy.config import Snapshot
from proxy.destinations import DestinationRegistry
from proxy.metrics import RequestStats
from proxy.pools import PoolRegistry
from proxy.routing import RouterBuilder
from proxy.tcpclient import find_target

# b's policy and Route for `api` are about b's `api`; a's Route for `api.b` too (a's is
# then the one a's proxies use, as for any name clash: own namespace wins).
DOCS = """\
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: api, namespace: b}
spec:
  host: api
  subsets: [{name: v2, labels: {version: v2}}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: api, namespace: b}
spec:
  host: api
  rules: [{backends: [{service: api, subset: v2}]}]
"""


def proxy(service: str, namespace: str, port: int, **kw: Any) -> ProxyInfo:
    return ProxyInfo(name=f"{service}-{namespace}-{port}", service=service, namespace=namespace,
                     labels={"version": "v2"}, inbound=f"127.0.0.1:{port}",
                     admin="127.0.0.1:1", mode="sidecar", ready=True, **kw)


API_A, API_B = proxy("api", "a", 9001), proxy("api", "b", 9002)
WEB_A, WEB_C = proxy("web", "a", 9003), proxy("web", "c", 9004)


def snapshot(viewer: ProxyInfo, proxies: list[ProxyInfo], docs: str = DOCS) -> dict[str, Any]:
    built = SnapshotBuilder(load_documents(docs, "t.yaml"), proxies).build(viewer)
    data: dict[str, Any] = json.loads(built.data)
    return data


def test_a_name_means_the_own_namespaces_service_else_the_only_one() -> None:
    names = ServiceNames([("api", "a"), ("api", "b"), ("db", "b")])
    assert names.resolve("api", "a") == ("api", "a")
    assert names.resolve("api", "c") is None  # two other namespaces have one: ambiguous
    assert names.resolve("db", "a") == ("db", "b")  # the only `db`
    for host in ("api.b", "api.b.svc", "api.b.svc.cluster.local"):
        assert names.resolve(host, "a") == ("api", "b")
    assert names.resolve("api.b.example.com", "a") is None  # an outside host
    assert names.resolve("api.github.com", "a") is None
    assert [names.key("api", ns, "a") for ns in ("a", "b")] == ["api", "api.b"]
    assert [names.key("api", ns, "c") for ns in ("a", "b")] == ["api.a", "api.b"]
    assert names.key("db", "b", "a") == "db"


def test_same_named_services_stay_apart_in_every_snapshot() -> None:
    """Each keeps its endpoints, identity and policy; a's proxies name b's `api.b`, c's
    proxies (no `api` of their own) both qualified; a name only one namespace has stays bare
    everywhere, so meshes without a clash keep their snapshots."""
    mesh = [API_A, API_B, WEB_A, WEB_C]
    a = snapshot(WEB_A, mesh)["services"]
    assert sorted(a) == ["api", "api.b", "web", "web.c"]
    assert (a["api"]["namespace"], a["api"]["identity"]) == (
        "a", "spiffe://cluster.local/ns/a/sa/api")
    assert [e["address"] for e in a["api"]["endpoints"]] == ["127.0.0.1:9001"]
    assert (a["api.b"]["namespace"], a["api.b"]["identity"]) == (
        "b", "spiffe://cluster.local/ns/b/sa/api")
    assert [e["address"] for e in a["api.b"]["endpoints"]] == ["127.0.0.1:9002"]
    assert "subsets" not in a["api"] and a["api.b"]["subsets"][0]["name"] == "v2"
    c = snapshot(WEB_C, mesh)["services"]
    assert sorted(c) == ["api.a", "api.b", "web", "web.a"]
    lone = snapshot(WEB_A, [API_B, WEB_A])["services"]
    assert sorted(lone) == ["api", "web"] and lone["api"]["namespace"] == "b"


def test_a_route_is_about_its_own_namespaces_service() -> None:
    """b's Route for `api` is `api` for b's proxies, `api.b` (marked as b's, so its backends
    resolve there) for the others; a's `api` has no Route."""
    mesh = [API_A, API_B, WEB_A, WEB_C]
    assert snapshot(API_B, mesh)["routes"] == [
        {"host": "api", "rules": [{"backends": [{"service": "api", "subset": "v2"}]}]}]
    assert snapshot(WEB_A, mesh)["routes"] == [
        {"host": "api.b", "namespace": "b",
         "rules": [{"backends": [{"service": "api", "subset": "v2"}]}]}]
    own = DOCS + """\
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: api-b, namespace: a}
spec:
  host: api.b.svc.cluster.local
  rules: [{backends: [{service: web}]}]
"""
    assert snapshot(WEB_A, mesh, own)["routes"] == [
        {"host": "api.b", "rules": [{"backends": [{"service": "web"}]}]}]


def test_tcp_services_are_per_namespace() -> None:
    """`protocol: tcp` is settled per service: a's `db` declaring tcp, b's not, stay so."""
    db_a = replace(proxy("db", "a", 9101), app_protocol="tcp")
    db_b = proxy("db", "b", 9102)
    services = snapshot(WEB_A, [db_a, db_b, WEB_A])["services"]
    assert services["db"]["protocol"] == "tcp" and "protocol" not in services["db.b"]


async def test_the_proxy_finds_each_namespaces_service_by_its_names() -> None:
    """CONNECT and `--tcp-upstream` names resolve as Host does: `db` is the own namespace's,
    `db.b...` b's; a Route of b names b's services as backends."""
    db = [replace(proxy("db", ns, port), app_protocol="tcp")
          for ns, port in (("a", 9101), ("b", 9102))]
    snap = Snapshot.from_dict(snapshot(WEB_A, [*db, API_A, API_B, WEB_A]))
    builder = RouterBuilder(snap, PoolRegistry(asyncio.get_running_loop()), random.Random(1),
                            lambda blocks: None, DestinationRegistry(RequestStats()))
    router = builder.outbound()
    for name, port in (("db", 9101), ("db.b:5432", 9102), ("db.b.svc.cluster.local", 9102),
                       ("db.a.svc", 9101)):
        target = find_target(router.tcp, name)
        assert target is not None, name
        pool, = target.decision.backends[0].pools
        assert pool.address.port == port, name
    for authority in ("api.b:80", "api.b.svc.cluster.local:80", "api:80"):
        assert router.tunnels_into_mesh(authority) and router.is_mesh_host(authority)
    route_backend, = builder._compile_route("api.b", snap.routes["api.b"], "source") \
        .rules[0][1].backends
    assert [p.address.port for p in route_backend.pools] == [9002]
    # Labelled with the name this proxy gives it; the workload is `api` all the same.
    assert route_backend.metric_prefix == ("source", "web", "v2", "api.b", "api")
    # From c, which has no `api`: both qualified, the bare name is no mesh service's.
    from_c = RouterBuilder(Snapshot.from_dict(snapshot(WEB_C, [API_A, API_B, WEB_C])),
                           PoolRegistry(asyncio.get_running_loop()), random.Random(1),
                           lambda blocks: None, DestinationRegistry(RequestStats())).outbound()
    assert from_c.tunnels_into_mesh("api.b.svc.cluster.local:80")
    assert from_c.tunnels_into_mesh("api.a:80") and not from_c.tunnels_into_mesh("api:80")

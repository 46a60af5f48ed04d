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


def _route(namespace: str, host: str, backend: str, name: str = "") -> str:
    return (f"---\napiVersion: ami.mesh/v1alpha1\nkind: Route\n"
            f"metadata: {{name: {name or 'r-' + host}, namespace: {namespace}}}\n"
            f"spec:\n  host: {host}\n  rules: [{{backends: [{{service: {backend}}}]}}]\n")


def test_routes_follow_the_lookup_path_callers_namespace_then_services() -> None:
    """Of the Routes about b's `api`, a proxy gets its own namespace's, else b's (the
    service's); z's is for z's proxies only, whatever the namespaces' order."""
    docs = DOCS + _route("z", "api.b", "web") + _route("a", "api.b.svc.cluster.local", "web")
    mesh = [API_A, API_B, WEB_A, WEB_C, proxy("web", "z", 9005)]

    def origin(viewer: ProxyInfo) -> list[str | None]:
        return [r.get("namespace") for r in snapshot(viewer, mesh, docs)["routes"]]

    assert origin(WEB_A) == [None]  # a's own, keyed api.b
    assert origin(WEB_C) == ["b"]  # not z's, which sorts last
    assert origin(API_B) == [None]
    assert origin(proxy("web", "z", 9005)) == [None]


def test_a_host_naming_its_namespace_beats_a_bare_name_falling_back() -> None:
    """In c (no `api` of its own, one `api` in b), `api` and `api.b` are both b's `api`:
    the Route that names b wins over the bare name's, whichever sorts last."""
    docs = _route("c", "api", "web", "z-sorts-last") + _route("c", "api.b", "api", "a-first")
    routes = snapshot(WEB_C, [API_B, WEB_C], docs)["routes"]
    assert routes == [{"host": "api", "rules": [{"backends": [{"service": "api"}]}]}]


def test_a_bare_host_several_other_namespaces_have_is_about_none() -> None:
    """c's Route for `api` (a and b have one, c none) applies to neither: not to a's proxies'
    own `api`, nor as a route for the name in c."""
    docs = _route("c", "api", "web")
    for viewer in (WEB_A, WEB_C, API_B):
        assert snapshot(viewer, [API_A, API_B, WEB_A, WEB_C], docs)["routes"] == []


def test_the_rate_limit_is_the_services_own_namespaces_whatever_the_spelling() -> None:
    """b's DestinationPolicy rate-limits b's `api` at its sidecars written `api`, `api.b` or
    as FQDN; a's policy for `api.b` is a's callers' and a's `api` gets neither."""
    limit = "  rateLimit: {requestsPerSecond: 5}\n"
    for host in ("api", "api.b", "api.b.svc", "api.b.svc.cluster.local"):
        docs = DOCS.replace("  host: api\n", f"  host: {host}\n", 1).replace(
            "  subsets:", limit + "  subsets:", 1)
        mesh = [API_A, API_B, WEB_A]
        assert snapshot(API_B, mesh, docs)["inbound"]["rateLimit"] == {"requestsPerSecond": 5}
        assert "rateLimit" not in snapshot(API_A, mesh, docs)["inbound"], host
    other = ("apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\n"
             "metadata: {name: api-b, namespace: a}\nspec:\n  host: api.b\n" + limit)
    assert "rateLimit" not in snapshot(API_B, [API_A, API_B], other)["inbound"]


async def test_a_name_of_a_namespace_without_that_service_finds_none() -> None:
    """`api.c` and `api.c.svc...` (c has no `api`) are neither a Host's, a CONNECT's into the
    mesh, a TCP name's nor a mesh name for ExternalServices: not the own `api` by its first
    label. `api.example.com` still is `api` for Host (documented), not for CONNECT."""
    db = replace(proxy("db", "a", 9101), app_protocol="tcp")
    snap = Snapshot.from_dict(snapshot(WEB_A, [db, API_A, API_B, WEB_A]))
    router = RouterBuilder(snap, PoolRegistry(asyncio.get_running_loop()), random.Random(1),
                           lambda blocks: None, DestinationRegistry(RequestStats())).outbound()
    for name in ("api.c", "api.c.svc", "api.c.svc.cluster.local"):
        assert not router.is_mesh_host(f"{name}:80"), name
        assert not router.tunnels_into_mesh(f"{name}:80"), name
        assert find_target(router.tcp, name.replace("api", "db", 1)) is None, name
    assert find_target(router.tcp, "db.a.svc.cluster.local:5432") is not None
    assert router.is_mesh_host("api.example.com:80")
    assert not router.tunnels_into_mesh("api.example.com:80")

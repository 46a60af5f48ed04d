"""Sidecar documents (the parser's checks and those across documents, with field paths) and
the snapshots they scope: only in-scope services, routes and external hosts; byte-identical
snapshots for meshes (and proxies) no Sidecar applies to, and for changes outside a scope."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.resources import load_documents, validate_set
from meshctl.api.sidecar import EgressHost, Scope, SidecarSpec
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder
from proxy.config import Snapshot

HEAD = "apiVersion: ami.mesh/v1alpha1\nkind: Sidecar\nmetadata: {name: %s, namespace: a}\n"


def issues_of(text: str) -> list[str]:
    try:
        resources = load_documents(text, "sc.yaml")
    except ValidationError as err:
        return [str(i) for i in err.issues]
    return [str(i) for i in validate_set(resources)]


def test_a_full_document_parses() -> None:
    [r] = load_documents(HEAD % "web" + "spec:\n  workloadSelector: {labels: {app: web}}\n"
                         "  egress: [{hosts: ['./*', 'b/api']}, {hosts: ['*/*.example.com']}]\n"
                         "  outboundTrafficPolicy: {mode: ALLOW_ANY}\n", "sc.yaml")
    assert r.spec == SidecarSpec((("app", "web"),), (
        EgressHost(".", "*"), EgressHost("b", "api"), EgressHost("*", "*.example.com")),
        "ALLOW_ANY")


@pytest.mark.parametrize(("spec", "expected"), [
    ("{}", ["sc.yaml doc 1: spec.egress: field is required (or outboundTrafficPolicy, or both)"]),
    ("{egress: []}", ["sc.yaml doc 1: spec.egress: at least one entry is required"]),
    ("{egress: [{hosts: []}]}", ["sc.yaml doc 1: spec.egress[0].hosts: at least one host is "
                                 "required"]),
    ("{egress: [{hosts: [b]}]}", ["sc.yaml doc 1: spec.egress[0].hosts[0]: expected "
                                  "'namespace/dnsName': namespace '.', '*', '~' or a DNS-1123 "
                                  "label; dnsName '*', '*.' and a DNS suffix, or a DNS name "
                                  "(e.g. './*', 'b/*', '*/api.b'), got 'b'"]),
    ("{egress: [{hosts: ['./*', 'B/*', 'b/', 'b/a_b']}]}",
     [f"sc.yaml doc 1: spec.egress[0].hosts[{i}]: expected 'namespace/dnsName': namespace "
      "'.', '*', '~' or a DNS-1123 label; dnsName '*', '*.' and a DNS suffix, or a DNS name "
      f"(e.g. './*', 'b/*', '*/api.b'), got {h!r}" for i, h in ((1, "B/*"), (2, "b/"),
                                                               (3, "b/a_b"))]),
    ("{egress: [{hosts: ['~/api']}]}", ["sc.yaml doc 1: spec.egress[0].hosts[0]: '~' (no "
                                        "namespace) only goes with '*' ('~/*': no host), got "
                                        "'~/api'"]),
    ("{egress: [{hosts: ['./*'], port: {number: 80}}]}",
     ["sc.yaml doc 1: spec.egress[0].port: Istio's port is not supported: Ami sidecars have "
      "one outbound listener, which every egress entry shares"]),
    ("{workloadSelector: {labels: {}}, egress: [{hosts: ['./*']}]}",
     ["sc.yaml doc 1: spec.workloadSelector.labels: at least one label is required (leave "
      "workloadSelector out for the whole namespace)"]),
    ("{workloadSelector: {matchLabels: {app: web}}, egress: [{hosts: ['./*']}]}",
     ["sc.yaml doc 1: spec.workloadSelector.labels: field is required",
      "sc.yaml doc 1: spec.workloadSelector.matchLabels: unknown field, expected one of "
      "labels"]),
    ("{outboundTrafficPolicy: {mode: ALLOW_SOME}}",
     ["sc.yaml doc 1: spec.outboundTrafficPolicy.mode: unknown value 'ALLOW_SOME', expected "
      "one of REGISTRY_ONLY, ALLOW_ANY"]),
    ("{ingress: [], egress: [{hosts: ['./*']}]}",
     ["sc.yaml doc 1: spec.ingress: Istio's ingress is not supported: the inbound side is the "
      "sidecar's --inbound and --app, not a Sidecar's"]),
    ("{egress: [{hosts: ['./*']}], egres: []}",
     ["sc.yaml doc 1: spec.egres: unknown field, did you mean 'egress'?"]),
])
def test_invalid_specs_are_refused_with_their_field_path(spec: str, expected: list[str]) -> None:
    assert issues_of(HEAD % "s" + f"spec: {spec}\n") == expected


def test_one_namespace_wide_sidecar_per_namespace_and_one_per_selector() -> None:
    wide = "spec: {egress: [{hosts: ['./*']}]}\n"
    web = "spec: {workloadSelector: {labels: {app: web}}, egress: [{hosts: ['./*']}]}\n"
    text = "---\n".join([HEAD % "one" + wide, HEAD % "two" + wide, HEAD % "web" + web,
                         HEAD % "web2" + web,
                         (HEAD % "other").replace("namespace: a", "namespace: b") + wide])
    assert issues_of(text) == [
        "sc.yaml doc 2: spec: namespace a already has a namespace-wide Sidecar (one without "
        "workloadSelector) (see Sidecar a/one in sc.yaml doc 1)",
        "sc.yaml doc 4: spec.workloadSelector.labels: a Sidecar of namespace a already "
        "selects app=web (see Sidecar a/web in sc.yaml doc 3)"]


@pytest.mark.parametrize(("host", "service", "seen"), [
    ("./*", ("api", "a"), True), ("./*", ("api", "b"), False), ("b/*", ("api", "b"), True),
    ("*/*", ("api", "b"), True), ("~/*", ("api", "a"), False), ("b/api", ("api", "b"), True),
    ("b/api", ("db", "b"), False), ("*/api.b", ("api", "b"), True),
    ("*/api.b.svc.cluster.local", ("api", "b"), True), ("*/api.b", ("api", "c"), False),
    ("*/*.b.svc.cluster.local", ("api", "b"), True), ("*/*.svc.cluster.local", ("x", "c"), True),
    ("*/*.c.svc.cluster.local", ("api", "b"), False),
])
def test_scope_matches_services_as_istio_hosts_do(host: str, service: tuple[str, str],
                                                  seen: bool) -> None:
    ns, _, name = host.partition("/")
    assert Scope((EgressHost(ns, name),), "a", "cluster.local").sees_service(*service) is seen


def test_scope_matches_outside_hosts_by_their_resources_namespace() -> None:
    scope = Scope((EgressHost(".", "*"), EgressHost("*", "*.example.com")), "a", "cluster.local")
    assert scope.sees_host("x.partner.io", "a")
    assert not scope.sees_host("x.partner.io", "ext")
    assert scope.sees_host("api.example.com", "ext")


# -- snapshots ---------------------------------------------------------------------------------
MESH = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: db, namespace: b}
spec: {host: db, rules: [{timeout: 2s, backends: [{service: db}]}]}
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: db, namespace: b}
spec: {host: db, loadBalancer: ROUND_ROBIN}
---
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {name: partner, namespace: b}
spec: {hosts: [api.partner.io], ports: [{number: 80, protocol: HTTP}]}
---
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {name: own, namespace: a}
spec: {hosts: [own.partner.io], ports: [{number: 80, protocol: HTTP}]}
"""
SCOPED = """\
---
apiVersion: ami.mesh/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: a}
spec: {egress: [{hosts: ["./*"]}]}
"""


def proxy(service: str, ns: str, port: int, mode: str = "sidecar") -> ProxyInfo:
    return ProxyInfo(name=f"{service}-{ns}-{port}", service=service, namespace=ns,
                     labels={"version": "v1"}, inbound=f"127.0.0.1:{port}", mode=mode,
                     ready=True)


WEB, API, DB, GW = (proxy("web", "a", 1), proxy("api", "b", 2), proxy("db", "b", 3),
                    proxy("gw", "a", 4, "gateway"))
ENDPOINTS = [WEB, API, DB]


def built(text: str, who: ProxyInfo) -> tuple[str, dict[str, Any]]:
    snap = SnapshotBuilder(load_documents(text, "m.yaml"), ENDPOINTS, gateways=[GW]).build(who)
    data = json.loads(snap.data)
    Snapshot.from_dict(data)  # the proxy takes it
    return snap.version, data


def test_a_scoped_sidecar_lists_only_its_scope() -> None:
    _, whole = built(MESH, WEB)
    assert set(whole["services"]) == {"web", "api", "db"}
    assert [r["host"] for r in whole["routes"]] == ["db"]
    assert set(whole["external"]) == {"api.partner.io", "own.partner.io"}
    _, scoped = built(MESH + SCOPED, WEB)
    assert set(scoped["services"]) == {"web"}
    assert scoped["routes"] == []
    assert set(scoped["external"]) == {"own.partner.io"}
    assert scoped["mesh"] == whole["mesh"]


def test_proxies_no_sidecar_applies_to_keep_their_bytes() -> None:
    """Another namespace's Sidecar, and any for a gateway, change nothing of theirs."""
    for who in (API, DB, GW):
        assert built(MESH + SCOPED, who) == built(MESH, who), who.name


def test_a_selector_beats_the_namespace_wide_sidecar() -> None:
    text = MESH + SCOPED + """\
---
apiVersion: ami.mesh/v1alpha1
kind: Sidecar
metadata: {name: web, namespace: a}
spec:
  workloadSelector: {labels: {app: web, version: v1}}
  egress: [{hosts: ["./*", "b/db"]}]
  outboundTrafficPolicy: {mode: ALLOW_ANY}
"""
    _, data = built(text, WEB)
    assert set(data["services"]) == {"web", "db"}
    assert [r["host"] for r in data["routes"]] == ["db"]
    assert data["services"]["db"]["policy"] == {"loadBalancer": "ROUND_ROBIN"}
    assert data["mesh"]["outboundTrafficPolicy"] == {"mode": "ALLOW_ANY"}
    other = dataclasses.replace(proxy("web", "a", 5), labels={"version": "v2"})
    _, wide = built(text, other)  # v2 is not selected: the namespace-wide one applies
    assert set(wide["services"]) == {"web"}


def test_a_change_outside_the_scope_keeps_the_scoped_snapshot() -> None:
    """b's Route changes: b's callers get a new version, a's scoped sidecar the same bytes."""
    changed = MESH.replace("timeout: 2s", "timeout: 3s")
    assert built(changed + SCOPED, WEB) == built(MESH + SCOPED, WEB)
    assert built(changed + SCOPED, API)[0] != built(MESH + SCOPED, API)[0]
    assert built(changed, WEB)[0] != built(MESH, WEB)[0]  # (unscoped, it would change)

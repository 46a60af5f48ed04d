"""PeerAuthentication without processes: parsing, validation across documents, the effective
mode (service > namespace > mesh, UNSET inherits), and what the snapshots carry of it."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.peerauthn import MtlsModes, PeerAuthenticationSpec
from meshctl.api.resources import Resource, load_documents, validate_set
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder
from proxy.config import ConfigError, Snapshot


def peer_auth(name: str, mode: str | None, service: str | None = None,
              namespace: str = "default") -> str:
    spec = []
    if service is not None:
        spec.append(f"selector: {{service: {service}}}")
    if mode is not None:
        spec.append(f"mtls: {{mode: {mode}}}")
    return (f"apiVersion: ami.mesh/v1alpha1\nkind: PeerAuthentication\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\n"
            f"spec: {{{', '.join(spec)}}}\n")


def istio(name: str, labels: str, extra: str = "", mode: str = "STRICT",
          namespace: str = "default") -> str:
    """A PeerAuthentication as Istio users write it: selector.matchLabels (and ``extra``)."""
    more = f", {extra}" if extra else ""
    return (f"apiVersion: ami.mesh/v1alpha1\nkind: PeerAuthentication\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\n"
            f"spec: {{selector: {{matchLabels: {{{labels}}}}}, mtls: {{mode: {mode}}}{more}}}\n")


def mesh_config(mode: str) -> str:
    return ("apiVersion: ami.mesh/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\n"
            f"spec: {{mtls: {{mode: {mode}}}}}\n")


def load(*texts: str) -> list[Resource]:
    return [r for n, text in enumerate(texts, 1) for r in load_documents(text, f"f{n}.yaml")]


# -- parsing and validation ------------------------------------------------------------------

def test_spec_parses_selector_and_mode_with_unset_as_default() -> None:
    """`selector.service` picks one service (absent: the namespace); `mtls.mode` defaults to
    UNSET, as Istio's."""
    [one, whole, empty] = load(peer_auth("a", "PERMISSIVE", "legacy"),
                               peer_auth("b", "DISABLE", namespace="edge"),
                               peer_auth("c", None))
    assert one.spec == PeerAuthenticationSpec("legacy", "PERMISSIVE")
    assert (whole.namespace, whole.spec) == ("edge", PeerAuthenticationSpec(None, "DISABLE"))
    assert empty.spec == PeerAuthenticationSpec(None, "UNSET")


@pytest.mark.parametrize("text, expected", [
    (peer_auth("a", "MUTUAL"), "f1.yaml doc 1: spec.mtls.mode: unknown value 'MUTUAL', "
                               "expected one of STRICT, PERMISSIVE, DISABLE, UNSET"),
    (peer_auth("a", "strict"), "f1.yaml doc 1: spec.mtls.mode: unknown value 'strict', "
                               "expected one of STRICT, PERMISSIVE, DISABLE, UNSET"),
    (peer_auth("a", "STRICT", "Legacy_1"), "f1.yaml doc 1: spec.selector.service: "),
    (peer_auth("a", "STRICT", "x").replace("spec: {", "spec: {portLevelMtls: {}, "),
     "f1.yaml doc 1: spec.portLevelMtls: must have at least one port"),
    (peer_auth("a", "STRICT").replace("spec: {", "spec: {portLevelMtls: {8080: {mode: DISABLE}}, "),
     "f1.yaml doc 1: spec.portLevelMtls: needs a selector (selector.matchLabels or "
     "selector.service)"),
    (istio("a", "app: x", "portLevelMtls: {0: {mode: DISABLE}}"),
     "f1.yaml doc 1: spec.portLevelMtls.0: expected a port number 1-65535, got 0"),
    (istio("a", "app: x", "portLevelMtls: {http: {mode: DISABLE}}"),
     "f1.yaml doc 1: spec.portLevelMtls.http: expected a port number 1-65535, got 'http'"),
    (istio("a", "app: x", "portLevelMtls: {9080: {mode: MUTUAL}}"),
     "f1.yaml doc 1: spec.portLevelMtls.9080.mode: unknown value 'MUTUAL'"),
    (istio("a", "app: x", "portLevelMtls: {9080: {mode: DISABLE}, '9080': {mode: STRICT}}"),
     "f1.yaml doc 1: spec.portLevelMtls.9080: port 9080 is given twice"),
    (peer_auth("a", "STRICT", "x").replace("{service: x}", "{service: x, matchLabels: {app: x}}"),
     "f1.yaml doc 1: spec.selector.matchLabels: selector.service and selector.matchLabels are "
     "two forms of one selector"),
    (istio("a", "app: Not_A_Service"), "f1.yaml doc 1: spec.selector.matchLabels.app: "),
    (istio("a", "", "portLevelMtls: {9080: {mode: DISABLE}}"),  # empty: the namespace
     "f1.yaml doc 1: spec.portLevelMtls: needs a selector"),
    (istio("a", "'bad key!': v1"), "f1.yaml doc 1: spec.selector.matchLabels.bad key!: "),
    (peer_auth("a", "STRICT").replace("spec: {", "spec: {selector: {}, "),
     "f1.yaml doc 1: spec.selector.service: field is required (or matchLabels"),
])
def test_bad_documents_name_the_field(text: str, expected: str) -> None:
    """A mode that is not one of the four (spelt exactly), a bad service name, and Istio's
    validation of selectors and portLevelMtls (a selector is required for it, ports 1-65535,
    one selector form at a time): refused with file, document and field path."""
    with pytest.raises(ValidationError) as err:
        load(text)
    assert any(str(i).startswith(expected) for i in err.value.issues), str(err.value)


def test_one_namespace_wide_and_one_per_service_per_namespace() -> None:
    """Two namespace-wide PeerAuthentications in one namespace, or two for one service, are
    refused (which one applied would be left to chance), naming the first; the same in other
    namespaces, or a namespace-wide one beside a per-service one, is fine."""
    assert validate_set(load(
        peer_auth("ns", "STRICT"), peer_auth("legacy", "PERMISSIVE", "legacy"),
        peer_auth("ns", "DISABLE", namespace="edge"),
        peer_auth("legacy", "DISABLE", "legacy", namespace="edge"))) == []
    issues = [str(i) for i in validate_set(load(
        peer_auth("ns", "STRICT"), peer_auth("ns-too", "PERMISSIVE"),
        peer_auth("a", "PERMISSIVE", "legacy") + "---\n" + peer_auth("b", "UNSET", "legacy")))]
    assert issues == [
        "f2.yaml doc 1: spec.selector: namespace default already has a namespace-wide "
        "PeerAuthentication (one without selector) (see PeerAuthentication default/ns in "
        "f1.yaml doc 1)",
        "f3.yaml doc 2: spec.selector.service: service legacy already has a "
        "PeerAuthentication (see PeerAuthentication default/a in f3.yaml doc 1)"]


def test_meshctl_validate_reports_both_mistakes(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`meshctl validate` on a directory: an unknown mode in one file, a second namespace-wide
    PeerAuthentication in another, each with its file, document and field; exit 1."""
    from tests.test_api_validate_cli import run

    (tmp_path / "a.yaml").write_text(peer_auth("ns", "STRICT") + "---\n"
                                     + peer_auth("ns-again", "PERMISSIVE"))
    (tmp_path / "b.yaml").write_text(peer_auth("legacy", "PERMISIVE", "legacy"))
    assert run("validate", "-f", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert (f"{tmp_path / 'b.yaml'} doc 1: spec.mtls.mode: unknown value 'PERMISIVE', expected "
            "one of STRICT, PERMISSIVE, DISABLE, UNSET") in err
    (tmp_path / "b.yaml").unlink()
    assert run("validate", "-f", str(tmp_path)) == 1
    assert (f"{tmp_path / 'a.yaml'} doc 2: spec.selector: namespace default already has a "
            "namespace-wide PeerAuthentication") in capsys.readouterr().err


# -- the effective mode ------------------------------------------------------------------------

@pytest.mark.parametrize("mesh, namespace, service, expected", [
    ("STRICT", None, None, "STRICT"),
    ("STRICT", None, "PERMISSIVE", "PERMISSIVE"),
    ("STRICT", "DISABLE", None, "DISABLE"),
    ("STRICT", "DISABLE", "STRICT", "STRICT"),          # service > namespace
    ("DISABLE", "PERMISSIVE", "UNSET", "PERMISSIVE"),   # UNSET: the namespace's
    ("PERMISSIVE", "UNSET", "UNSET", "PERMISSIVE"),     # ... and then the mesh's
    ("DISABLE", None, "STRICT", "STRICT"),
])
def test_effective_mode_is_service_then_namespace_then_mesh(
        mesh: str, namespace: str | None, service: str | None, expected: str) -> None:
    """The service's own mode wins over its namespace's, which wins over the mesh's; UNSET
    at a level defers to the next."""
    declared = []
    if namespace is not None:
        declared.append(("default", PeerAuthenticationSpec(None, namespace)))
    if service is not None:
        declared.append(("default", PeerAuthenticationSpec("legacy", service)))
    modes = MtlsModes(mesh, declared)
    assert modes.mode("default", "legacy") == expected
    # Other services take the namespace's; other namespaces the mesh's.
    assert modes.mode("default", "reviews") == (
        namespace if namespace not in (None, "UNSET") else mesh)
    assert modes.mode("edge", "legacy") == mesh


def test_decided_by_names_the_level_and_a_gateway_skips_the_namespace() -> None:
    """`decided_by` tells which level decides (None: the mesh); a gateway heeds only the one
    naming its own service, as for AuthorizationPolicy."""
    modes = MtlsModes("STRICT", [("default", PeerAuthenticationSpec(None, "PERMISSIVE")),
                                 ("default", PeerAuthenticationSpec("legacy", "DISABLE"))])
    assert modes.decided_by("default", "legacy") == ("default", "legacy")
    assert modes.decided_by("default", "reviews") == ("default", None)
    assert modes.decided_by("edge", "reviews") is None
    assert modes.mode("default", "ingress", namespace_wide=False) == "STRICT"
    assert modes.mode("default", "legacy", namespace_wide=False) == "DISABLE"
    assert not MtlsModes("STRICT", [("default", PeerAuthenticationSpec(None, "UNSET"))])


# -- snapshots ---------------------------------------------------------------------------------

def sidecar(service: str, port: int, namespace: str = "default",
            mode: str = "sidecar") -> ProxyInfo:
    return ProxyInfo(name=f"{service}-{port}", service=service, namespace=namespace,
                     labels={"version": "v1"}, inbound=f"127.0.0.1:{port}", mode=mode,
                     ready=True)


LEGACY, REVIEWS = sidecar("legacy", 9001), sidecar("reviews", 9002)
DB = sidecar("db", 9003, namespace="data")
ENDPOINTS = [LEGACY, REVIEWS, DB]


def built(resources: list[Resource], proxy: ProxyInfo) -> bytes:
    return SnapshotBuilder(resources, ENDPOINTS).build(proxy).data


def test_snapshots_keep_their_bytes_when_nothing_differs_from_the_mesh() -> None:
    """No PeerAuthentication, one UNSET, or one repeating the mesh's mode: the same bytes as
    before the kind existed, for every proxy."""
    base = load(mesh_config("STRICT"))
    same = load(mesh_config("STRICT"), peer_auth("a", "UNSET"),
                peer_auth("b", "STRICT", "legacy"), peer_auth("c", "UNSET", "db", "data"))
    for proxy in ENDPOINTS:
        assert built(same, proxy) == built(base, proxy)
    # sidecars that register their app's port (Register.app_port): the same bytes too
    ported = [dataclasses.replace(p, app_port=9080) for p in ENDPOINTS]
    for before, after in zip(ENDPOINTS, ported, strict=True):
        assert SnapshotBuilder(same, ported).build(after) == SnapshotBuilder(
            base, ENDPOINTS).build(before)
    assert b"mtls\":\"STRICT" in built(base, REVIEWS) and b'"inbound":{"authorization":[]}' \
        in built(base, REVIEWS)


def test_services_carry_their_mode_and_each_sidecar_its_inbound_mode() -> None:
    """Mesh STRICT, legacy PERMISSIVE, namespace data DISABLE: every proxy's snapshot says so
    of legacy and db (callers follow it), and their own sidecars' inbound runs it."""
    resources = load(mesh_config("STRICT"), peer_auth("legacy", "PERMISSIVE", "legacy"),
                     peer_auth("data", "DISABLE", namespace="data"))
    for proxy in ENDPOINTS:
        data = json.loads(built(resources, proxy))
        services = data["services"]
        assert (services["legacy"]["mtls"], services["db"]["mtls"]) == ("PERMISSIVE", "DISABLE")
        assert "mtls" not in services["reviews"]
        snap = Snapshot.from_dict(data)
        assert [snap.service_mtls(snap.services[s]) for s in ("legacy", "reviews", "db")] == [
            True, True, False]
    own = {p.service: Snapshot.from_dict(json.loads(built(resources, p))).inbound_mtls
           for p in ENDPOINTS}
    assert own == {"legacy": "PERMISSIVE", "reviews": "STRICT", "db": "DISABLE"}
    assert "mtls" not in json.loads(built(resources, REVIEWS))["inbound"]


def test_a_gateway_takes_only_the_peer_authentication_naming_it() -> None:
    """A namespace-wide PeerAuthentication is about the namespace's sidecars, not its gateway
    (as for AuthorizationPolicy); one naming the gateway's service applies to it."""
    gateway = sidecar("ingress", 8080, mode="gateway")
    resources = load(mesh_config("STRICT"), peer_auth("ns", "PERMISSIVE"))
    assert Snapshot.from_dict(json.loads(built(resources, gateway))).inbound_mtls == "STRICT"
    resources = load(mesh_config("STRICT"), peer_auth("gw", "PERMISSIVE", "ingress"))
    assert Snapshot.from_dict(json.loads(built(resources, gateway))).inbound_mtls == "PERMISSIVE"


def test_a_mesh_in_disable_sends_mtls_to_a_strict_service() -> None:
    """Auto mTLS works both ways: with the mesh DISABLE, a service made STRICT is called over
    mTLS, the others in plaintext."""
    resources = load(mesh_config("DISABLE"), peer_auth("legacy", "STRICT", "legacy"))
    snap = Snapshot.from_dict(json.loads(built(resources, REVIEWS)))
    assert snap.mesh.mtls == "DISABLE" and snap.inbound_mtls == "DISABLE"
    assert snap.service_mtls(snap.services["legacy"])
    assert not snap.service_mtls(snap.services["db"])


@pytest.mark.parametrize("patch, expected", [
    ({"services": {"legacy": {"mtls": "OFF"}}},
     "services.legacy.mtls: expected DISABLE, PERMISSIVE or STRICT, got 'OFF'"),
    ({"inbound": {"mtls": "UNSET"}},
     "inbound.mtls: expected DISABLE, PERMISSIVE or STRICT, got 'UNSET'"),
])
def test_a_snapshot_with_a_bad_mode_is_refused_with_its_path(
        patch: dict[str, object], expected: str) -> None:
    """The proxy refuses (NACKs) a snapshot whose service or inbound mode is not a mode."""
    with pytest.raises(ConfigError, match=expected):
        Snapshot.from_dict({"mesh": {"mtls": "STRICT"}, **patch})


# -- meshctl check ----------------------------------------------------------------------------

def test_check_names_the_services_each_relaxing_one_decides() -> None:
    """A namespace-wide PERMISSIVE names the registered services of its namespace that have
    no PeerAuthentication of their own (not a gateway, not another namespace's); one that
    decides for none says so; UNSET and STRICT are fine; no PeerAuthentication, no group."""
    from meshctl.observe.peerchecks import peer_authentication_checks

    resources = load(mesh_config("STRICT"), peer_auth("ns", "PERMISSIVE"),
                     peer_auth("reviews", "UNSET", "reviews"),
                     peer_auth("legacy", "STRICT", "legacy"),
                     peer_auth("data", "DISABLE", namespace="data"))
    proxies = [{"service": "reviews"}, {"service": "legacy", "namespace": "default"},
               {"service": "ratings", "namespace": "default"},
               {"service": "ingress", "mode": "gateway"}, {"service": "other", "namespace": "x"}]
    meshes = [r for r in resources if r.kind == "MeshConfig"]
    peers = [r for r in resources if r.kind == "PeerAuthentication"]
    [group] = peer_authentication_checks(peers, meshes, proxies)
    assert [(c.name, c.state, c.detail) for c in group.checks] == [
        ("PeerAuthentication data/data", "warn", "DISABLE, mTLS not enforced for: "
                                                 "no registered service"),
        ("PeerAuthentication default/legacy", "ok", "STRICT"),
        ("PeerAuthentication default/ns", "warn", "PERMISSIVE, mTLS not enforced for: "
                                                  "ratings, reviews"),
        ("PeerAuthentication default/reviews", "ok", "UNSET")]
    assert peer_authentication_checks([], meshes, proxies) == []


async def test_a_sidecar_needs_its_certificate_unless_nothing_it_serves_uses_mtls() -> None:
    """Readiness without a certificate: only when both the mesh and this sidecar's own mode
    are DISABLE. A STRICT service in a DISABLE mesh waits for its certificate (its inbound
    refuses plaintext); a DISABLE service in a STRICT mesh too (it calls the others over
    mTLS)."""
    from proxy.server import ProxyOptions, ProxyServer

    server = ProxyServer(ProxyOptions())
    for mesh, own, ready in (("DISABLE", None, True), ("DISABLE", "STRICT", False),
                             ("STRICT", "DISABLE", False), ("DISABLE", "PERMISSIVE", False)):
        server.apply(Snapshot.from_dict({"mesh": {"mtls": mesh},
                                         "inbound": {"mtls": own} if own else {}}))
        assert server.identity_ready is ready, (mesh, own)


# -- Istio's forms: selector.matchLabels and portLevelMtls -------------------------------------

def workload(service: str, version: str, port: int, app_port: int = 0,
             mode: str = "sidecar") -> ProxyInfo:
    return ProxyInfo(name=f"{service}-{version}-{port}", service=service,
                     labels={"version": version}, inbound=f"127.0.0.1:{port}", mode=mode,
                     ready=True, app_port=app_port)


V1, V3 = workload("reviews", "v1", 9101, 9080), workload("reviews", "v3", 9103, 9083)
RATINGS = workload("ratings", "v3", 9104, 9080)
WORKLOADS = [V1, V3, RATINGS]


def snapshot_of(resources: list[Resource], proxy: ProxyInfo) -> dict[str, object]:
    data = json.loads(SnapshotBuilder(resources, WORKLOADS).build(proxy).data)
    assert isinstance(data, dict)
    return data


def test_match_labels_app_is_selector_service_to_the_byte() -> None:
    """`matchLabels: {app: reviews}` parses as `service: reviews` and gives every proxy the
    same snapshot bytes; an empty matchLabels is the whole namespace, as in Istio."""
    [labels, empty] = load(istio("r", "app: reviews", mode="PERMISSIVE"), istio("ns", ""))
    assert labels.spec.service == "reviews" and labels.spec.selector == {"app": "reviews"}
    assert empty.spec.selector is None
    ours = load(mesh_config("STRICT"), peer_auth("r", "PERMISSIVE", "reviews"))
    theirs = load(mesh_config("STRICT"), istio("r", "app: reviews", mode="PERMISSIVE"))
    for proxy in WORKLOADS:
        a = SnapshotBuilder(ours, WORKLOADS).build(proxy)
        b = SnapshotBuilder(theirs, WORKLOADS).build(proxy)
        assert (a.version, a.data) == (b.version, b.data)


def test_selectors_that_can_select_one_sidecar_are_refused_naming_the_first() -> None:
    """Istio applies the oldest of two selectors matching one workload; Ami refuses the
    second at apply instead (no hidden loser). Selectors differing in a label's value are
    disjoint and fine, as are equal ones in two namespaces; `{app: x}` and `service: x` are
    the same selector."""
    assert validate_set(load(
        istio("v1", "app: reviews, version: v1"), istio("v3", "app: reviews, version: v3"),
        istio("r", "app: reviews", namespace="edge"), istio("ratings", "app: ratings"))) == []
    issues = [str(i) for i in validate_set(load(
        istio("all", "app: reviews"), istio("v3", "app: reviews, version: v3"),
        istio("any-v3", "version: v3", namespace="edge"),
        istio("ratings-v3", "app: ratings, version: v3", namespace="edge"),
        peer_auth("svc", "STRICT", "reviews")))]
    assert issues == [
        "f5.yaml doc 1: spec.selector.service: service reviews already has a "
        "PeerAuthentication (see PeerAuthentication default/all in f1.yaml doc 1)",
        "f2.yaml doc 1: spec.selector.matchLabels: selector app=reviews,version=v3 can select "
        "the same sidecars as service reviews (see PeerAuthentication default/all in f1.yaml "
        "doc 1): give them selectors that differ in a label's value (Istio would apply the older "
        "one)",
        "f4.yaml doc 1: spec.selector.matchLabels: selector app=ratings,version=v3 can select "
        "the same sidecars as selector version=v3 (see PeerAuthentication edge/any-v3 in "
        "f3.yaml doc 1): give them selectors that differ in a label's value (Istio would apply the "
        "older one)"]


def test_workload_mode_is_selector_then_port_then_namespace_then_mesh() -> None:
    """Mesh STRICT, namespace PERMISSIVE; reviews v3 DISABLE with port 9083 STRICT, ratings
    UNSET with port 9080 DISABLE. A port entry beats its selector's mode, an UNSET mode
    inherits from the namespace; a gateway takes selectors matching its labels, never the
    namespace's."""
    declared = [(r.namespace, r.spec) for r in load(
        peer_auth("ns", "PERMISSIVE"),
        istio("v3", "app: reviews, version: v3", "portLevelMtls: {9083: {mode: STRICT}}",
              mode="DISABLE"),
        istio("ratings", "app: ratings", "portLevelMtls: {9080: {mode: DISABLE}}",
              mode="UNSET"),
        istio("gw", "app: ingress, tier: edge", mode="DISABLE"))]
    modes = MtlsModes("STRICT", declared)
    assert modes.per_workload
    v3 = {"version": "v3"}
    assert modes.mode("default", "reviews", labels=v3) == "DISABLE"
    assert modes.mode("default", "reviews", labels=v3, port=9083) == "STRICT"
    assert modes.mode("default", "reviews", labels={"version": "v1"}, port=9083) == "PERMISSIVE"
    assert modes.mode("default", "reviews") == "PERMISSIVE"  # the service as such
    assert modes.mode("default", "ratings", port=9080) == "DISABLE"
    assert modes.mode("default", "ratings", port=9081) == "PERMISSIVE"
    assert modes.decided_by("default", "reviews", labels=v3) == (
        "default", "app=reviews,version=v3")
    assert modes.decided_by("default", "ratings", port=9081) == ("default", None)
    assert modes.mode("default", "ingress", False, {"tier": "edge"}) == "DISABLE"
    assert modes.mode("default", "ingress", False, {"tier": "core"}) == "STRICT"
    assert not MtlsModes("STRICT", [("default", PeerAuthenticationSpec("reviews", "DISABLE"))]
                         ).per_workload


def test_snapshots_state_only_what_differs_per_sidecar() -> None:
    """v3 PERMISSIVE, ratings' port 9080 DISABLE: reviews keeps no service-wide mode; its v3
    endpoint says PERMISSIVE and v1 nothing; ratings' endpoint says DISABLE (callers send it
    plaintext) and its own inbound runs DISABLE; v1's inbound states nothing (the mesh's)."""
    resources = load(mesh_config("STRICT"),
                     istio("v3", "app: reviews, version: v3", mode="PERMISSIVE"),
                     istio("ratings", "app: ratings", "portLevelMtls: {9080: {mode: DISABLE}}",
                           mode="UNSET"))
    data = snapshot_of(resources, V1)
    services = data["services"]
    assert isinstance(services, dict)
    assert "mtls" not in services["reviews"]
    assert [e.get("mtls") for e in services["reviews"]["endpoints"]] == [None, "PERMISSIVE"]
    assert [e.get("mtls") for e in services["ratings"]["endpoints"]] == ["DISABLE"]
    snap = Snapshot.from_dict(data)
    reviews, ratings = snap.services["reviews"], snap.services["ratings"]
    assert [snap.service_mtls(reviews, e) for e in reviews.endpoints] == [True, True]
    assert [snap.service_mtls(ratings, e) for e in ratings.endpoints] == [False]
    assert snap.inbound_mtls == "STRICT" and "mtls" not in data["inbound"]  # type: ignore
    assert Snapshot.from_dict(snapshot_of(resources, V3)).inbound_mtls == "PERMISSIVE"
    assert Snapshot.from_dict(snapshot_of(resources, RATINGS)).inbound_mtls == "DISABLE"
    # a sidecar that did not say its app port (an older proxy): no port entry applies
    older = workload("ratings", "v3", 9105)
    assert Snapshot.from_dict(json.loads(SnapshotBuilder(resources, WORKLOADS).build(
        older).data)).inbound_mtls == "STRICT"


def test_an_endpoint_with_a_bad_mode_is_refused_with_its_path() -> None:
    """The proxy NACKs an endpoint mode that is not a mode, naming it."""
    with pytest.raises(ConfigError, match=r"services.r.endpoints\[0\].mtls: expected DISABLE"):
        Snapshot.from_dict({"services": {"r": {"endpoints": [
            {"address": "127.0.0.1:1", "mtls": "UNSET"}]}}})

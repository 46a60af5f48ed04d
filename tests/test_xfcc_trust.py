"""Which peers' x-forwarded-client-cert a sidecar keeps, without processes: MeshConfig's
`trustedXfccIdentities`, the trusted gateways' ids in each snapshot's `mesh`, the static
file's field, and the merged header."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.resources import load_documents
from meshctl.controlplane.registry import ProxyInfo, Registry
from meshctl.controlplane.snapshots import SnapshotBuilder
from proxy.config import ConfigError, Snapshot, check_known_keys
from proxy.headers import appended_xfcc

NGINX = "spiffe://cluster.local/ns/edge/sa/nginx"
INGRESS = "spiffe://cluster.local/ns/edge/sa/ingress"


def mesh_config(spec: str) -> str:
    return f"apiVersion: ami.mesh/v1alpha1\nkind: MeshConfig\nmetadata: {{name: default}}\n" \
           f"spec: {spec}\n"


def sidecar(name: str, service: str, port: int, **kw: str) -> ProxyInfo:
    return ProxyInfo(name=name, service=service, inbound=f"127.0.0.1:{port}", ready=True,
                     labels={"version": "v1"}, **kw)  # type: ignore[arg-type]


ECHO = sidecar("echo-v1", "echo", 9001)
GATEWAY = ProxyInfo(name="ingress-gw", service="ingress", namespace="edge", mode="gateway",
                    ready=True, trusted_gateway=True)  # registered with a gateway token


def test_mesh_config_takes_workload_ids_of_its_trust_domain() -> None:
    [doc] = load_documents(mesh_config(f"{{trustedXfccIdentities: [{NGINX}]}}"), "m.yaml")
    assert doc.spec.trusted_xfcc_identities == (NGINX,)  # type: ignore[union-attr]
    [other] = load_documents(mesh_config(
        "{trustDomain: corp.example, trustedXfccIdentities: "
        "[spiffe://corp.example/ns/edge/sa/nginx]}"), "m.yaml")
    assert other.spec.trusted_xfcc_identities == (  # type: ignore[union-attr]
        "spiffe://corp.example/ns/edge/sa/nginx",)


@pytest.mark.parametrize(("value", "message"), [
    ("[spiffe://other.example/ns/edge/sa/nginx]",
     "m.yaml doc 1: spec.trustedXfccIdentities[0]: 'spiffe://other.example/ns/edge/sa/nginx' "
     "is of trust domain 'other.example', not the mesh's 'cluster.local' (trustDomain): the "
     "mesh CA issues no such identity"),
    (f"[{NGINX}, spiffe://cluster.local/edge/nginx]",
     "m.yaml doc 1: spec.trustedXfccIdentities[1]: invalid value "
     "'spiffe://cluster.local/edge/nginx', expected a workload SPIFFE id like "
     "spiffe://cluster.local/ns/<namespace>/sa/<service>"),
    ("[https://nginx.edge]", "spec.trustedXfccIdentities[0]: invalid value 'https://nginx.edge'"),
    ("[spiffe://cluster.local/ns/Edge/sa/nginx]", "expected a workload SPIFFE id like"),
    (NGINX, "spec.trustedXfccIdentities: expected a list, got a string"),
    ("[42]", "spec.trustedXfccIdentities[0]: expected a string, got an integer"),
])
def test_mesh_config_refuses_other_values_naming_the_item(value: str, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        load_documents(mesh_config(f"{{trustedXfccIdentities: {value}}}"), "m.yaml")
    assert message in str(err.value)


def test_snapshot_lists_the_gateways_and_mesh_config_ids_sorted_once() -> None:
    """Every proxy's `mesh.trustedXfccIdentities`: the registered gateways' ids (any
    namespace, ready or not) and MeshConfig's, sorted, each once; sidecars are not in it."""
    resources = load_documents(mesh_config(f"{{trustedXfccIdentities: [{NGINX}, {INGRESS}]}}"),
                               "m.yaml")
    unready_gw = replace(GATEWAY, name="gw-2", service="web", namespace="default", ready=False)
    builder = SnapshotBuilder(resources, [ECHO], gateways=[GATEWAY, unready_gw, ECHO])
    data = json.loads(builder.build(ECHO).data)
    expected = ["spiffe://cluster.local/ns/default/sa/web", INGRESS, NGINX]
    assert data["mesh"]["trustedXfccIdentities"] == expected
    assert Snapshot.from_dict(data).mesh.trusted_xfcc == tuple(expected)
    # the gateways' ids again, kept only from a certificate with the gateway marker: INGRESS
    # too, though MeshConfig lists it (a trusted gateway's id is any of its service's proxies')
    gateways = ["spiffe://cluster.local/ns/default/sa/web", INGRESS]
    assert data["mesh"]["gatewayIdentities"] == gateways
    assert Snapshot.from_dict(data).mesh.gateway_xfcc == tuple(gateways)
    # the same list in a gateway's own snapshot and another namespace's sidecar's
    other_ns = replace(ECHO, name="echo-b", namespace="b")
    for proxy in (GATEWAY, other_ns):
        assert json.loads(builder.build(proxy).data)["mesh"]["trustedXfccIdentities"] == expected


def test_without_gateways_or_ids_snapshots_keep_their_bytes() -> None:
    """No gateway and no MeshConfig ids: the key is absent, so the snapshot is what it was
    before the field existed; a gateway registering changes every proxy's version."""
    plain = SnapshotBuilder([], [ECHO]).build(ECHO)
    assert b"trustedXfccIdentities" not in plain.data
    assert SnapshotBuilder([], [ECHO], gateways=[]).build(ECHO) == plain
    assert SnapshotBuilder(load_documents(mesh_config("{trustedXfccIdentities: []}"), "m.yaml"),
                           [ECHO]).build(ECHO) == plain
    with_gateway = SnapshotBuilder([], [ECHO], gateways=[GATEWAY]).build(ECHO)
    assert with_gateway.version != plain.version


def test_a_gateway_registered_with_a_service_token_is_not_listed() -> None:
    """A gateway is trusted for its registration's token, not its mode: one registered with
    the plain service token adds nothing (snapshots keep their bytes), nor does a sidecar
    carrying the flag (which the config stream never sets: it refuses a gateway token there)."""
    plain = SnapshotBuilder([], [ECHO]).build(ECHO)
    untrusted = replace(GATEWAY, trusted_gateway=False)
    flagged_sidecar = replace(ECHO, name="echo-v2", trusted_gateway=True)
    assert SnapshotBuilder([], [ECHO], gateways=[untrusted, flagged_sidecar]).build(ECHO) == plain
    trusted = json.loads(SnapshotBuilder([], [ECHO], gateways=[untrusted, GATEWAY])
                         .build(ECHO).data)
    assert trusted["mesh"]["trustedXfccIdentities"] == [INGRESS]


def test_a_sidecar_keeps_a_gateways_xfcc_only_from_a_marked_certificate() -> None:
    """The inbound listener's rule: a MeshConfig id (no Ami gateway) by its id; a trusted
    gateway's id only with the gateway marker; anyone else, and plaintext, never."""
    from proxy.listener import Listener

    listener = Listener.__new__(Listener)  # the rule alone: no loop, no socket
    listener.xfcc_trusted = frozenset({NGINX, INGRESS})
    listener.xfcc_gateways = frozenset({INGRESS})
    assert listener.keeps_xfcc(NGINX, False) and listener.keeps_xfcc(INGRESS, True)
    assert not listener.keeps_xfcc(INGRESS, False)
    shop = "spiffe://cluster.local/ns/default/sa/shop"
    assert not listener.keeps_xfcc(shop, True) and not listener.keeps_xfcc(None, False)


def test_the_ca_asks_the_registry_for_a_trusted_gateway_by_name() -> None:
    """Registry.trusted_gateway (what the CA marks by): that name, registered in gateway mode
    with its gateway token, of that namespace and service; in its grace too."""
    now = [0.0]
    registry = Registry(grace=2.0, clock=lambda: now[0])
    session = registry.register(GATEWAY)
    registry.register(replace(GATEWAY, name="plain-gw", trusted_gateway=False))
    registry.register(ECHO)
    assert registry.trusted_gateway("ingress-gw", "edge", "ingress")
    assert not registry.trusted_gateway("ingress-gw", "default", "ingress")
    assert not registry.trusted_gateway("ingress-gw", "edge", "web")
    assert not registry.trusted_gateway("plain-gw", "edge", "ingress")
    assert not registry.trusted_gateway("echo-v1", "default", "echo")
    assert not registry.trusted_gateway("nobody", "edge", "ingress")
    registry.disconnect(GATEWAY.name, session)
    assert registry.trusted_gateway("ingress-gw", "edge", "ingress")
    now[0] = 2.5
    registry.expire()
    assert not registry.trusted_gateway("ingress-gw", "edge", "ingress")


def test_the_registry_lists_gateways_until_their_grace_ends() -> None:
    now = [0.0]
    registry = Registry(grace=2.0, clock=lambda: now[0])
    session = registry.register(GATEWAY)
    registry.register(ECHO)
    assert registry.gateways() == [GATEWAY]
    registry.disconnect(GATEWAY.name, session)
    assert registry.gateways() == [GATEWAY]  # a reconnect within the grace changes nothing
    now[0] = 2.5
    registry.expire()
    assert registry.gateways() == []


def test_old_snapshots_trust_no_one_and_static_files_are_checked() -> None:
    assert Snapshot.from_dict({}).mesh.trusted_xfcc == ()
    static = {"mesh": {"trustDomain": "corp.example",
                       "trustedXfccIdentities": ["spiffe://corp.example/ns/edge/sa/nginx"]}}
    check_known_keys(static)
    assert Snapshot.from_dict(static).mesh.trusted_xfcc == (
        "spiffe://corp.example/ns/edge/sa/nginx",)
    static["mesh"]["gatewayIdentities"] = ["spiffe://corp.example/ns/edge/sa/ingress"]
    check_known_keys(static)
    assert Snapshot.from_dict(static).mesh.gateway_xfcc == (
        "spiffe://corp.example/ns/edge/sa/ingress",)
    with pytest.raises(ConfigError, match=r"^mesh\.gatewayIdentities\[0\]: .* is of trust "
                                          r"domain 'cluster\.local'"):
        Snapshot.from_dict({"mesh": {"trustDomain": "corp.example",
                                     "gatewayIdentities": [INGRESS]}})
    with pytest.raises(ConfigError, match=r"^mesh\.trustedXfccIdentities\[0\]: "
                                          r"'spiffe://cluster\.local/ns/edge/sa/nginx' is of "
                                          r"trust domain 'cluster\.local', not the mesh's "
                                          r"'corp\.example'"):
        Snapshot.from_dict({"mesh": {"trustDomain": "corp.example",
                                     "trustedXfccIdentities": [NGINX]}})
    with pytest.raises(ConfigError, match=r"trustedXfccIdentities: expected a list"):
        Snapshot.from_dict({"mesh": {"trustedXfccIdentities": NGINX}})
    with pytest.raises(ConfigError, match="did you mean 'trustedXfccIdentities'"):
        check_known_keys({"mesh": {"trustedXfccIdentity": [NGINX]}})


def test_the_sidecars_element_follows_the_kept_one_after_a_comma() -> None:
    own = b"x-forwarded-client-cert: By=spiffe://cluster.local/ns/default/sa/echo;URI=" \
          + INGRESS.encode() + b"\r\n"
    assert appended_xfcc(b'Hash=ab;Subject="CN=shop"', own) == (
        b'x-forwarded-client-cert: Hash=ab;Subject="CN=shop",By=spiffe://cluster.local/ns/'
        b"default/sa/echo;URI=" + INGRESS.encode() + b"\r\n")

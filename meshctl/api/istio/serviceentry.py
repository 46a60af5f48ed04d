"""Istio ServiceEntry -> Ami ExternalService: outside hosts, their ports and fixed addresses."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from meshctl.api import fields as F
from meshctl.api.fields import Fields
from meshctl.api.istio.common import Translation, ami_doc, done, items, metadata, refuse

# NONE: the app's own address is used (Istio's original destination), which for a host name
# is what Ami does without endpoints: the requested name is resolved when connecting.
RESOLUTIONS = ("NONE", "STATIC", "DNS", "DNS_ROUND_ROBIN", "DYNAMIC_DNS")
# Istio proxies these as TCP (adding the protocol's own statistics): Ami as TCP too
TCP_FAMILY = frozenset({"MONGO", "MYSQL", "REDIS"})
# a port's protocol by its name's prefix (`http-api`), Istio's rule when `protocol` is absent
NAMED = ("HTTP", "HTTP2", "HTTPS", "GRPC", "TCP", "TLS", "MONGO", "MYSQL", "REDIS")
ENDPOINT_REFUSED = {
    "ports": "an endpoint's own port numbers; Ami reaches every endpoint on the port's "
             "targetPort (default: its number): set ports[].targetPort",
    "labels": "endpoint labels; an ExternalService's endpoints are one set (no subsets)",
    "network": "endpoint networks", "locality": "endpoint localities",
    "weight": "endpoint weights; the endpoints are balanced by the host's DestinationRule",
    "serviceAccount": "serviceAccount; an outside host has no mesh identity"}


def translate(doc: Mapping[str, Any], origin: str) -> list[Translation]:
    """The ExternalService of a MESH_EXTERNAL ServiceEntry, named as it."""
    meta = metadata(doc)
    f = Fields(doc.get("spec"), "spec")
    spec: dict[str, Any] = {}
    if f.has("hosts"):
        spec["hosts"] = f.raw("hosts")
    _location(f)
    resolution = f.raw("resolution") if f.has("resolution") else "NONE"
    if resolution not in RESOLUTIONS:
        f.add(f.at("resolution"), f"unknown value {resolution!r}, expected one of "
                                  + ", ".join(RESOLUTIONS))
    ports = [_port(f, path, data) for path, data in items(f, "ports")]
    if f.has("ports"):
        spec["ports"] = ports
    endpoints = [_endpoint(f, path, data, resolution) for path, data in items(f, "endpoints")]
    if endpoints:
        spec["endpoints"] = endpoints
    if resolution == "NONE" and endpoints:
        f.add(f.at("endpoints"), "endpoints with resolution NONE (Istio refuses them too): "
                                 "use resolution STATIC for IP addresses, DNS for names")
    if resolution == "STATIC" and not endpoints and not f.has("workloadSelector"):
        f.add(f.at("endpoints"), "resolution STATIC needs endpoints (their IP addresses)")
    refuse(f, "addresses", "addresses (virtual IPs); apps reach an outside host through their "
                           "sidecar by its name, so no address is captured")
    refuse(f, "workloadSelector", "workloadSelector; an ExternalService's endpoints are "
                                  "outside hosts, never mesh workloads")
    refuse(f, "subjectAltNames", "subjectAltNames (they verify mesh workloads); a "
                                 "DestinationRule's tls.sni names the outside host to verify")
    export = f.raw("exportTo")
    if export is not None and export != ["*"]:
        f.add(f.at("exportTo"), "not supported by Ami: exportTo other than [\"*\"]; an "
                                "ExternalService's hosts are known in every namespace "
                                "(a Sidecar's egress hosts scope them)")
    f.finish()
    t = Translation(ami_doc("ExternalService", meta, spec, origin), origin)
    for key in ("hosts", "ports", "endpoints"):
        t.at(f"spec.{key}", f"spec.{key}")
    return [t]


def _location(f: Fields) -> None:
    location = f.raw("location")
    if location == "MESH_INTERNAL":
        f.add(f.at("location"), "not supported by Ami: MESH_INTERNAL; a mesh service is one "
                                "whose sidecars register with the control plane (meshctl "
                                "sidecar --service), and an ExternalService is always outside "
                                "the mesh (MESH_EXTERNAL: plaintext or the TLS a "
                                "DestinationRule originates, never the mesh's mTLS)")
    elif location is not None and location != "MESH_EXTERNAL":
        f.add(f.at("location"), f"unknown value {location!r}, expected MESH_EXTERNAL")


def _port(f: Fields, path: str, data: object) -> dict[str, Any]:
    """A ServicePort as an ExternalService port; `name` only tells its protocol (Istio's)."""
    if not isinstance(data, Mapping):
        f.add(path, f"expected a mapping, got {F.describe(data)}")
        return {}
    p = Fields(data, path)
    out = {k: p.raw(k) for k in ("number", "targetPort") if p.has(k)}
    name = p.raw("name")
    protocol = p.raw("protocol")
    if protocol is None and isinstance(name, str):
        prefix = name.split("-")[0].upper()
        protocol = prefix if prefix in NAMED else None
    if protocol is None:
        p.add(p.at("protocol"), "field is required: Ami does not detect a port's protocol "
                                "(give protocol, or a name such as http-api, Istio's "
                                "<protocol>[-<suffix>])")
    elif isinstance(protocol, str):
        protocol = protocol.upper()  # (Istio reads it in any case)
        out["protocol"] = "TCP" if protocol in TCP_FAMILY else protocol
    else:
        out["protocol"] = protocol  # (Ami's parser says what is wrong with it)
    done(f, p)
    return out


def _endpoint(f: Fields, path: str, data: object, resolution: object) -> dict[str, Any]:
    """A WorkloadEntry as an endpoint: its address alone."""
    if not isinstance(data, Mapping):
        f.add(path, f"expected a mapping, got {F.describe(data)}")
        return {}
    e = Fields(data, path)
    out = {"address": e.raw("address")} if e.has("address") else {}
    address = e.raw("address")
    if resolution == "STATIC" and isinstance(address, str) and not _is_ip(address):
        e.add(e.at("address"), f"resolution STATIC takes IP addresses, got {address!r} (a "
                               "DNS name: resolution DNS)")
    for key, why in ENDPOINT_REFUSED.items():
        refuse(e, key, why)
    done(f, e)
    return out


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True

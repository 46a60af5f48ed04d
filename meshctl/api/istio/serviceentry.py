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
        _short_hosts(f)
    _location(f)
    resolution = f.raw("resolution") if f.has("resolution") else "NONE"
    if resolution not in RESOLUTIONS:
        f.add(f.at("resolution"), f"unknown value {resolution!r}, expected one of "
                                  + ", ".join(RESOLUTIONS))
    named: dict[str, dict[str, Any]] = {}
    ports = [_port(f, path, data, named) for path, data in items(f, "ports")]
    if f.has("ports"):
        spec["ports"] = ports
    overrides: list[tuple[str, Mapping[str, Any]]] = []
    endpoints = [_endpoint(f, path, data, resolution, overrides)
                 for path, data in items(f, "endpoints")]
    _endpoint_ports(f, named, overrides, len(endpoints))
    if endpoints:
        spec["endpoints"] = endpoints
    if resolution == "NONE" and endpoints:
        f.add(f.at("endpoints"), "endpoints with resolution NONE (Istio refuses them too): "
                                 "use resolution STATIC for IP addresses, DNS for names")
    if resolution == "DNS_ROUND_ROBIN" and len(endpoints) > 1:
        f.add(f.at("endpoints"), "resolution DNS_ROUND_ROBIN takes at most one endpoint "
                                 "(Envoy's LOGICAL_DNS, which Istio makes of it, reaches one "
                                 "name); "
                                 "resolution DNS balances over several")
    if resolution == "STATIC" and not endpoints and not f.has("workloadSelector"):
        f.add(f.at("endpoints"), "resolution STATIC needs endpoints (their IP addresses)")
    refuse(f, "addresses", "addresses (virtual IPs); apps reach an outside host through their "
                           "sidecar by its name, so no address is captured")
    refuse(f, "workloadSelector", "workloadSelector; an ExternalService's endpoints are "
                                  "outside hosts, never mesh workloads")
    refuse(f, "subjectAltNames", "subjectAltNames (they verify mesh workloads); a "
                                 "DestinationRule's tls.sni names the outside host to verify")
    export = f.raw("exportTo")
    if export not in (None, [], ["*"]):  # (an empty list: every namespace, as in Istio)
        f.add(f.at("exportTo"), "not supported by Ami: exportTo other than [\"*\"]; an "
                                "ExternalService's hosts are known in every namespace "
                                "(a Sidecar's egress hosts scope them)")
    f.finish()
    t = Translation(ami_doc("ExternalService", meta, spec, origin), origin)
    for key in ("hosts", "ports", "endpoints"):
        t.at(f"spec.{key}", f"spec.{key}")
    return [t]


def _short_hosts(f: Fields) -> None:
    """A single-label host (`reviews`) is how apps call a mesh service of their namespace:
    Ami's mesh service would silently win over it, where Istio makes it a host of its own."""
    hosts = f.raw("hosts")
    for i, host in enumerate(hosts if isinstance(hosts, list) else ()):
        if isinstance(host, str) and host and "." not in host:
            f.add(f"{f.at('hosts')}[{i}]", f"not supported by Ami: a single-label host "
                                           f"({host!r}); it names a mesh service to the apps "
                                           "that call it, and a mesh service of that name "
                                           "wins over an ExternalService host: give the "
                                           "outside host's full DNS name")


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


def _port(f: Fields, path: str, data: object, named: dict[str, dict[str, Any]]
          ) -> dict[str, Any]:
    """A ServicePort as an ExternalService port (``named``: it, by its name); `name` tells
    its protocol when `protocol` does not (Istio's rule) and which endpoint ports are its."""
    if not isinstance(data, Mapping):
        f.add(path, f"expected a mapping, got {F.describe(data)}")
        return {}
    p = Fields(data, path)
    out = {k: p.raw(k) for k in ("number", "targetPort") if p.has(k)}
    name = p.raw("name")
    if isinstance(name, str):
        named[name] = out
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


def _endpoint(f: Fields, path: str, data: object, resolution: object,
              overrides: list[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """A WorkloadEntry as an endpoint: its address; its `ports` go to ``overrides``."""
    if not isinstance(data, Mapping):
        f.add(path, f"expected a mapping, got {F.describe(data)}")
        return {}
    e = Fields(data, path)
    ports = e.raw("ports")
    if isinstance(ports, Mapping):
        overrides.append((e.at("ports"), ports))
    elif ports is not None:
        e.add(e.at("ports"), f"expected a mapping of port name to number, got "
                             f"{F.describe(ports)}")
    out = {"address": e.raw("address")} if e.has("address") else {}
    address = e.raw("address")
    if resolution == "STATIC" and isinstance(address, str) and not _is_ip(address):
        e.add(e.at("address"), f"resolution STATIC takes IP addresses, got {address!r} (a "
                               "DNS name: resolution DNS)")
    for key, why in ENDPOINT_REFUSED.items():
        refuse(e, key, why)
    done(f, e)
    return out


def _endpoint_ports(f: Fields, named: Mapping[str, dict[str, Any]],
                    overrides: list[tuple[str, Mapping[str, Any]]], count: int) -> None:
    """Endpoints' `ports` ({port name: number}) as the ports' targetPort: Ami reaches every
    endpoint of a port on one number, so all endpoints must agree on it."""
    before = len(f.issues)
    for path, ports in overrides:
        for name, number in ports.items():
            if name not in named:
                f.add(F.join(path, str(name)), f"no port is named {name!r} (known: "
                                               f"{', '.join(sorted(named)) or 'none'})")
            elif not isinstance(number, int) or isinstance(number, bool):
                f.add(F.join(path, str(name)), f"expected a port number, got "
                                               f"{F.describe(number)}")
    if len(f.issues) > before:
        return
    for name, port in named.items():
        default = port.get("targetPort", port.get("number"))
        numbers = [ports.get(name, default) for _, ports in overrides]
        numbers += [default] * (count - len(overrides))  # (endpoints without ports)
        if len(set(numbers)) > 1:
            f.add(f.at("endpoints"), f"not supported by Ami: the endpoints of port {name!r} "
                                     f"on different ports ({', '.join(map(str, numbers))}); "
                                     "Ami reaches every endpoint of a port on one targetPort: "
                                     "declare them in ServiceEntries of their own")
        elif numbers and numbers[0] != port.get("number"):
            port["targetPort"] = numbers[0]


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return False
    return True

"""ExternalService: a host outside the mesh that apps may reach (Istio's ServiceEntry).

With the default ``outboundTrafficPolicy: REGISTRY_ONLY`` a sidecar refuses every host that is
no mesh service; an ExternalService names the outside hosts and ports it lets through, so that
Routes and DestinationPolicies apply to them like to a mesh service.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.errors import fail
from meshctl.api.fields import Fields

HTTP = "HTTP"
PROTOCOLS = ("HTTP", "HTTP2", "GRPC", "HTTPS", "TLS", "TCP")
# Proxied as HTTP/2 (h2c, or h2 over TLS the sidecar originates). GRPC says the calls are
# gRPC and is proxied exactly as HTTP2 (as in Istio, where both make an HTTP/2 cluster).
HTTP2_PROTOCOLS = frozenset({"HTTP2", "GRPC"})
TUNNEL_PROTOCOLS = frozenset({"HTTPS", "TLS", "TCP"})  # reached through CONNECT, as bytes
# A lower-case DNS name, or `*.` and a DNS suffix (any name ending in it), as Gateway hosts.
EXTERNAL_HOST = r"^(\*\.)?" + F.DNS_SUBDOMAIN[1:]
# An endpoint: a DNS name (resolved when connecting), an IPv4 or an IPv6 address.
ENDPOINT_ADDRESS = r"^(" + F.DNS_SUBDOMAIN[1:-1] + r"|[0-9a-fA-F.]*:[0-9a-fA-F:.]*)$"


@dataclass(frozen=True, slots=True)
class ExternalPort:
    """A port of the external hosts and what it carries."""

    number: int
    protocol: str
    target_port: int | None = None  # the port the endpoints are reached on; default: number

    @property
    def tunnel(self) -> bool:
        """Reached through CONNECT (a byte tunnel) rather than as HTTP requests."""
        return self.protocol in TUNNEL_PROTOCOLS


@dataclass(frozen=True, slots=True)
class ExternalServiceSpec:
    """spec of an ExternalService: hosts, their ports and, optionally, fixed addresses."""

    hosts: tuple[str, ...]
    ports: tuple[ExternalPort, ...]
    endpoints: tuple[str, ...] = ()  # empty: the requested host name is resolved (DNS)


def parse_external_service(data: object, path: str) -> ExternalServiceSpec:
    """Parse ExternalService.spec."""
    f = Fields(data, path)
    hosts = f.required("hosts", F.list_of(_HOST, 1, "at least one host is required"), ())
    ports = f.required("ports", F.list_of(_parse_port, 1, "at least one port is required"), ())
    endpoints = f.value("endpoints", F.list_of(_parse_endpoint), ())
    _unique(f, "hosts", hosts, "host")
    _unique(f, "ports", [p.number for p in ports], "port", ".number")
    _unique(f, "endpoints", endpoints, "endpoint", ".address")
    for i, host in enumerate(hosts):
        if is_mesh_name(host):
            f.add(f"{f.at('hosts')}[{i}]",
                  f"{host} is a mesh service name (name.namespace.svc...), not an outside host: "
                  "mesh services are reached over mTLS by their own name")
    if endpoints:
        for i, host in enumerate(hosts):
            if host.startswith("*."):
                f.add(f"{f.at('hosts')}[{i}]",
                      f"a wildcard host ({host}) cannot have endpoints: the requested name is "
                      "resolved when connecting; declare it in an ExternalService of its own")
    f.finish()
    return ExternalServiceSpec(hosts, ports, endpoints)


def is_mesh_name(host: str) -> bool:
    """`name.namespace.svc...`, the form mesh services are named by, or a wildcard over such
    names (`*.svc.cluster.local`, `*.default.svc.cluster.local`)."""
    labels = host.split(".")
    if labels[0] == "*":
        return "svc" in labels[1:3]
    return len(labels) > 2 and labels[2] == "svc"


_HOST = F.string(EXTERNAL_HOST, "a lower-case DNS name like api.example.com, or *. and a DNS "
                                "suffix", 253)


def _parse_port(data: object, path: str) -> ExternalPort:
    f = Fields(data, path)
    port = ExternalPort(f.required("number", F.integer(1, 65535), 0),
                        f.required("protocol", F.enum(PROTOCOLS), HTTP),
                        f.optional("targetPort", F.integer(1, 65535)))
    f.finish()
    return port


_ADDRESS = F.string(ENDPOINT_ADDRESS, "an IP address or a DNS name", 253)


def _parse_endpoint(data: object, path: str) -> str:
    f = Fields(data, path)
    address = f.required("address", _address, "")
    f.finish()
    return address


def _address(value: object, path: str) -> str:
    address = _ADDRESS(value, path)
    if ":" in address:
        try:
            ipaddress.IPv6Address(address)
        except ValueError:
            fail(path, f"invalid value {address!r}, expected an IP address or a DNS name")
    return address


def _unique(f: Fields, key: str, values: Sequence[object], what: str, suffix: str = "") -> None:
    seen: set[object] = set()
    for i, value in enumerate(values):
        if value in seen:
            f.add(f"{f.at(key)}[{i}]{suffix}", f"duplicate {what} {value}")
        seen.add(value)

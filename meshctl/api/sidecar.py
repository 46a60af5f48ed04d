"""Sidecar: which services a namespace's (or some workloads') sidecars know (Istio's egress hosts).

A Sidecar scopes the outbound side of the sidecars it selects: their snapshots list only the
services, routes, policies and ExternalService hosts its ``egress`` hosts match, so a host
outside the scope is an unknown host to them (404 ``no_route`` under REGISTRY_ONLY,
passthrough under ALLOW_ANY). Hosts are Istio's ``namespace/dnsName``: the namespace ``.``
(the Sidecar's own), ``*`` (any) or ``~`` (none: ``~/*`` scopes to nothing); the name ``*``,
``*.suffix`` (matched against a service's FQDN or an outside host) or a name (a service's bare,
``name.ns``, ``.svc`` or FQDN spelling, or an outside host). Gateways are never scoped, as in
Istio; the inbound side is unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.errors import fail
from meshctl.api.fields import Fields
from meshctl.api.workloads import workload_labels

OWN, ANY, NONE = ".", "*", "~"
_NAME = r"(\*|(\*\.)?" + F.DNS_SUBDOMAIN[1:-1] + ")"
# `~/*` is the one host with `~`; the parser says why another is refused
EGRESS_HOST = r"^(~/\*|([.*]|" + F.DNS_LABEL[1:-1] + ")/" + _NAME + ")$"
_HOST_TEXT = ("'namespace/dnsName': namespace '.', '*', '~' or a DNS-1123 label; dnsName '*', "
              "'*.' and a DNS suffix, or a DNS name (e.g. './*', 'b/*', '*/api.b')")


@dataclass(frozen=True, slots=True)
class EgressHost:
    """One ``namespace/dnsName`` of ``egress[].hosts``, as written."""

    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class SidecarSpec:
    """spec of a Sidecar: ``labels`` None = every sidecar of its namespace; ``hosts`` None =
    every host (no ``egress``: only ``outbound_traffic`` is set)."""

    labels: tuple[tuple[str, str], ...] | None
    hosts: tuple[EgressHost, ...] | None
    outbound_traffic: str | None = None

    def selects(self, service: str, labels: Mapping[str, str]) -> bool:
        """Whether the selector matches a sidecar of ``service`` with ``labels`` (as
        meshctl.api.workloads has them: ``app`` is its service)."""
        if self.labels is None:
            return True
        own = workload_labels(service, labels)
        return all(own.get(k) == v for k, v in self.labels)


def parse_sidecar(data: object, path: str) -> SidecarSpec:
    """Parse Sidecar.spec: ``egress``, ``outboundTrafficPolicy`` or both."""
    f = Fields(data, path)
    labels = f.optional("workloadSelector", _parse_selector)
    if not f.has("egress") and not f.has("outboundTrafficPolicy"):
        f.add(f.at("egress"), "field is required (or outboundTrafficPolicy, or both)")
    egress = f.optional("egress", F.list_of(_parse_egress, 1, "at least one entry is required"))
    mode = f.optional("outboundTrafficPolicy", _parse_outbound)
    _unsupported(f, ("ingress", "inboundConnectionPool"),
                 "the inbound side is the sidecar's --inbound and --app, not a Sidecar's")
    f.finish()
    hosts = None if egress is None else tuple(h for entry in egress for h in entry)
    return SidecarSpec(labels, hosts, mode)


def _parse_selector(data: object, path: str) -> tuple[tuple[str, str], ...]:
    f = Fields(data, path)
    labels = f.required("labels", F.labels, {})
    if f.has("labels") and not labels and not f.issues:
        f.add(f.at("labels"), "at least one label is required (leave workloadSelector out "
              "for the whole namespace)")
    f.finish()
    return tuple(sorted(labels.items()))


def _parse_egress(data: object, path: str) -> tuple[EgressHost, ...]:
    f = Fields(data, path)
    hosts = f.required("hosts", F.list_of(parse_egress_host, 1, "at least one host is required"),
                       ())
    _unsupported(f, ("port", "bind", "captureMode"),
                 "Ami sidecars have one outbound listener, which every egress entry shares")
    f.finish()
    return hosts


def parse_egress_host(value: object, path: str) -> EgressHost:
    """One ``namespace/dnsName`` egress host."""
    text = F.string()(value, path)
    namespace, slash, name = text.partition("/")
    if (not slash or not (namespace in (OWN, ANY, NONE) or re.match(F.DNS_LABEL, namespace))
            or not re.match(f"^{_NAME}$", name)):
        fail(path, f"expected {_HOST_TEXT}, got {text!r}")
    if namespace == NONE and name != ANY:
        fail(path, f"'~' (no namespace) only goes with '*' ('~/*': no host), got {text!r}")
    return EgressHost(namespace, name)


def _unsupported(f: Fields, keys: tuple[str, ...], why: str) -> None:
    """Istio's fields that Ami does not have: say so, rather than 'unknown field'."""
    for key in keys:
        if f.has(key):
            f.add(f.at(key), f"Istio's {key} is not supported: {why}")


def _parse_outbound(data: object, path: str) -> str:
    from meshctl.api.kinds import OUTBOUND_TRAFFIC_MODES  # (kinds imports this module)

    f = Fields(data, path)
    mode = f.required("mode", F.enum(OUTBOUND_TRAFFIC_MODES), "REGISTRY_ONLY")
    f.finish()
    return mode


class Scope:
    """The egress hosts of one Sidecar of ``namespace``, asked about services and hosts."""

    def __init__(self, hosts: tuple[EgressHost, ...], namespace: str, trust_domain: str) -> None:
        self._hosts = [(namespace if h.namespace == OWN else h.namespace, h.name)
                       for h in hosts if h.namespace != NONE]
        self._domain = trust_domain
        self._services: dict[tuple[str, str], bool] = {}  # asked once per endpoint: remembered

    def sees_service(self, name: str, namespace: str) -> bool:
        """Whether mesh service ``name`` of ``namespace`` is in scope."""
        seen = self._services.get((name, namespace))
        if seen is None:
            fqdn = f"{name}.{namespace}.svc.{self._domain}"
            spellings = (name, f"{name}.{namespace}", f"{name}.{namespace}.svc", fqdn)
            seen = self._services[(name, namespace)] = any(
                ns in (ANY, namespace) and _name_matches(pattern, fqdn, spellings)
                for ns, pattern in self._hosts)
        return seen

    def sees_host(self, host: str, namespace: str) -> bool:
        """Whether outside host ``host``, declared in ``namespace``, is in scope."""
        return any(ns in (ANY, namespace) and _name_matches(pattern, host, (host,))
                   for ns, pattern in self._hosts)

    def sees_host_anywhere(self, host: str) -> bool:
        """Whether outside host ``host`` is in scope declared in some namespace."""
        return any(_name_matches(pattern, host, (host,)) for _, pattern in self._hosts)


def _name_matches(pattern: str, full: str, spellings: tuple[str, ...]) -> bool:
    if pattern == ANY:
        return True
    if pattern.startswith("*."):
        return full.endswith(pattern[1:])
    return pattern in spellings

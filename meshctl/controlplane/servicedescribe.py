"""What shapes one service's traffic (``GET /api/v1/services/{ns}/{name}/describe``), matched
by the snapshot builder's own rules, for ``meshctl describe service``.

Every section is the answer the control plane itself gives when it builds snapshots: the Route
and DestinationPolicy each namespace's callers get (SnapshotBuilder.by_host), the
AuthorizationPolicies and RequestAuthentications a sidecar enforces (inbound_selects), its
effective mTLS mode and the level deciding it (MtlsModes), the Telemetry and Sidecar applying
to it (telemetry.selects, scoping.sidecar_for). Nothing is matched a second way here.

What a name means (a registered service, one only the store declares, an ExternalService
host, or nothing) is meshctl.controlplane.describetarget's answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import web

from meshctl.api.annotations import is_dry_run
from meshctl.api.authn import RequestAuthenticationSpec
from meshctl.api.authz import AuthorizationPolicySpec
from meshctl.api.external import ExternalServiceSpec
from meshctl.api.istio.common import TRANSLATED_FROM
from meshctl.api.kinds import GatewaySpec, RouteSpec
from meshctl.api.peerauthn import UNSET, PeerAuthenticationSpec, selects
from meshctl.api.policy import POLICY_FIELDS, DestinationPolicySpec
from meshctl.api.resources import Resource
from meshctl.api.telemetry import TelemetrySpec
from meshctl.api.telemetry import selects as telemetry_selects
from meshctl.api.workloads import workload_labels
from meshctl.controlplane.describetarget import (
    declared_services,
    external_declaring,
    external_hosts,
    host_matches,
    known_names,
    registered_services,
    unknown_message,
)
from meshctl.controlplane.httpapi import STORE
from meshctl.controlplane.names import ServiceNames
from meshctl.controlplane.proxystatus import proxies_json
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import Registry
from meshctl.controlplane.snapshots import SnapshotBuilder, inbound_selects
from meshctl.controlplane.store import StoredObject

Service = tuple[str, str]  # (name, namespace)


def _ref(obj: StoredObject) -> dict[str, Any]:
    origin = obj.resource.annotations.get(TRANSLATED_FROM)  # (written as Istio YAML)
    return {"name": obj.resource.name, "namespace": obj.resource.namespace,
            "resourceVersion": str(obj.resource_version),
            **({"translatedFrom": origin} if origin else {})}


def _spec(obj: StoredObject) -> dict[str, Any]:
    return dict(obj.resource.raw.get("spec") or {})


class ServiceDescription:
    """One state of (store, registry) seen from one service, or from one outside host that
    ``external`` (the ExternalServices declaring it) names."""

    def __init__(self, objects: Sequence[StoredObject], registry: Registry,
                 service: Service, external: Sequence[StoredObject] = ()) -> None:
        self.objects = sorted(objects, key=lambda o: o.key)
        self.versions = {o.key: o for o in self.objects}
        self.builder = SnapshotBuilder([o.resource for o in self.objects], registry.endpoints(),
                                       idle=registry.idle_sidecars(),
                                       gateways=registry.gateways())
        # The Routes HTTPRoutes make (named `httproute:NAMES`), at their newest version
        newest: dict[tuple[str, str], int] = {}
        for o in self.objects:
            if o.resource.kind in ("HTTPRoute", "GRPCRoute"):
                newest[(o.resource.namespace, o.resource.name)] = o.resource_version
        for r in self.builder.derived_routes:
            names = r.name.partition(":")[2].split(",")
            self.versions[r.key] = StoredObject(r, max(
                newest.get((r.namespace, n), 0) for n in names))
        self.service = service
        self.external = list(external)
        if not external and self.builder.names.resolve(*service) != service:
            # Declared, no sidecar yet: resolve names as its first sidecar will make them.
            self.builder.names = self.builder.names.with_service(*service)
        self.live = [p for p in registry.endpoints() if (p.service, p.namespace) == service]
        self.instances = [p for p in registry.proxies()
                          if (p.service, p.namespace) == service and p.mode == "sidecar"]
        # Every namespace whose callers may see a Route or policy of their own for it.
        self.viewers = sorted({p.namespace for p in registry.proxies()}
                              | {o.resource.namespace for o in self.objects})

    def _of(self, kind: str) -> list[StoredObject]:
        return [o for o in self.objects if o.resource.kind == kind]

    def _stored(self, resource: Resource) -> StoredObject:
        return self.versions[resource.key]

    def _means_it(self, host: str, namespace: str) -> bool:
        if self.external:
            return host == self.service[0]
        return self.builder.names.resolve(host, namespace) == self.service

    def _key(self, viewer: str) -> str:
        """How ``viewer``'s snapshots key it: an outside host by itself, everywhere."""
        name, namespace = self.service
        return name if self.external else self.builder.names.key(name, namespace, viewer)

    def chosen(self, kind: str) -> list[dict[str, Any]]:
        """The Route (or DestinationPolicy) of the service in each namespace's snapshots, with
        the namespaces whose callers get it (``callers``)."""
        found: dict[tuple[str, str, str], list[str]] = {}
        for viewer in self.viewers:
            resource = self.builder.by_host(kind, viewer).get(self._key(viewer))
            if resource is not None:
                found.setdefault(resource.key, []).append(viewer)
        return [{**_ref(self.versions[key]), "callers": callers}
                for key, callers in sorted(found.items())]

    def routes(self) -> list[dict[str, Any]]:
        """The Routes about the service, then those whose backends send to it (``via``)."""
        out = []
        for entry in self.chosen("Route"):
            obj = self.versions[("Route", entry["namespace"], entry["name"])]
            out.append({**entry, "via": "host", **self._route_body(obj)})
        for obj in self._of("Route"):
            spec = obj.resource.spec
            if (not isinstance(spec, RouteSpec) or self._means_it(spec.host, obj.resource.namespace)
                    or not any(b.service is not None
                               and self._means_it(b.service, obj.resource.namespace)
                               for rule in spec.rules for b in rule.backends)):
                continue
            out.append({**_ref(obj), "via": "backend", **self._route_body(obj)})
        return out

    def _route_body(self, obj: StoredObject) -> dict[str, Any]:
        spec = obj.resource.spec
        assert isinstance(spec, RouteSpec)
        raw_rules = _spec(obj).get("rules") or []
        return {"host": spec.host, "rules": [
            {"name": rule.name, "matches": raw.get("matches") or [],
             "backends": [{"service": b.service, "subset": b.subset, "weight": b.weight}
                          for b in rule.backends],
             **{k: raw[k] for k in ("timeout", "retries", "fault", "mirror", "rateLimit",
                                    "redirect", "directResponse") if k in raw}}
            for rule, raw in zip(spec.rules, raw_rules, strict=True)]}

    def policies(self) -> list[dict[str, Any]]:
        """The DestinationPolicies callers apply, each subset with the live endpoints it
        selects (``endpoints: 0`` is a subset no request sent to it can be served by)."""
        out = []
        for entry in self.chosen("DestinationPolicy"):
            obj = self.versions[("DestinationPolicy", entry["namespace"], entry["name"])]
            spec, raw = obj.resource.spec, _spec(obj)
            assert isinstance(spec, DestinationPolicySpec)
            subsets = [{"name": s.name, "labels": dict(s.labels),
                        "endpoints": [p.name for p in self.live if s.selects(p.labels)]}
                       for s in spec.subsets]
            out.append({**entry, "host": spec.host, "subsets": subsets,
                        "policy": {k: raw[k] for k in POLICY_FIELDS if k in raw}})
        return out

    def inbound(self, kind: str) -> list[dict[str, Any]]:
        """The AuthorizationPolicies (or RequestAuthentications) its sidecars enforce."""
        out = []
        for obj in self._of(kind):
            spec = obj.resource.spec
            if (not isinstance(spec, AuthorizationPolicySpec | RequestAuthenticationSpec)
                    or obj.resource.namespace != self.service[1]
                    or not inbound_selects(spec.service, self.service[0], "sidecar")):
                continue
            entry = {**_ref(obj), "selector": spec.service}
            if isinstance(spec, AuthorizationPolicySpec):
                entry.update(action=spec.action, rules=len(spec.rules),
                             dryRun=is_dry_run(obj.resource.annotations))
                if spec.provider is not None:  # CUSTOM: the extensionProviders item it asks
                    entry["provider"] = spec.provider
            else:
                entry["issuers"] = [r.issuer for r in spec.jwt_rules]
            out.append(entry)
        return out

    def mtls(self) -> dict[str, Any]:
        """Each sidecar's effective mode and the object deciding it (None: the mesh's), and
        the PeerAuthentications of its namespace that select any of them."""
        name, namespace = self.service
        modes = self.builder.mtls
        peers = [o for o in self._of("PeerAuthentication")
                 if o.resource.namespace == namespace
                 and isinstance(o.resource.spec, PeerAuthenticationSpec)]
        by_level: dict[str | None, str] = {}
        for o in reversed(peers):  # the first of a level wins, as in MtlsModes
            spec = o.resource.spec
            assert isinstance(spec, PeerAuthenticationSpec)
            if spec.selector is not None or spec.mode != UNSET:  # (an UNSET one decides nothing)
                by_level[spec.selector_text] = o.resource.name
        workloads = []
        for p in self.instances:
            level = modes.decided_by(namespace, name, True, p.labels, p.app_port)
            workloads.append({
                "proxy": p.name, "port": p.app_port or None,
                "mode": modes.mode(namespace, name, True, p.labels, p.app_port),
                "decidedBy": None if level is None else by_level.get(level[1])})
        level = modes.decided_by(namespace, name)
        selecting = []
        for o in peers:
            spec = o.resource.spec
            assert isinstance(spec, PeerAuthenticationSpec)
            selector = spec.selector
            if selector is None or any(selects(selector, workload_labels(name, p.labels))
                                       for p in self.instances):
                selecting.append({**_ref(o), "selector": spec.selector_text,
                                  "mode": spec.mode})
        return {"meshMode": modes.mesh_mode, "mode": modes.mode(namespace, name),
                "decidedBy": None if level is None else by_level.get(level[1]),
                "workloads": workloads, "peerAuthentications": selecting}

    def telemetries(self) -> list[dict[str, Any]]:
        """The Telemetry objects of its namespace: namespace-wide ones, and those selecting
        one of its sidecars."""
        name, namespace = self.service
        out = []
        for o in self._of("Telemetry"):
            spec = o.resource.spec
            if o.resource.namespace != namespace or not isinstance(spec, TelemetrySpec):
                continue
            chosen = [p.name for p in self.instances if telemetry_selects(spec, name, p.labels)]
            if spec.match_labels is None or chosen:
                out.append({**_ref(o), "selector": None if spec.match_labels is None
                            else dict(spec.match_labels), "proxies": chosen})
        return out

    def sidecars(self) -> list[dict[str, Any]]:
        """The Sidecar resource scoping each of its proxies."""
        found: dict[tuple[str, str, str], list[str]] = {}
        for p in self.instances:
            resource = self.builder.sidecar(p)
            if resource is not None:
                found.setdefault(resource.key, []).append(p.name)
        return [{**_ref(self.versions[key]), "proxies": names}
                for key, names in sorted(found.items())]

    def gateways(self) -> list[dict[str, Any]]:
        """Gateway rules and passthrough entries whose destination is the service."""
        out = []
        for o in self._of("Gateway"):
            spec, raw = o.resource.spec, _spec(o)
            if not isinstance(spec, GatewaySpec):
                continue
            for index, (rule, rule_raw) in enumerate(zip(spec.rules, raw.get("rules") or [],
                                                         strict=True)):
                if any(self._means_it(s, o.resource.namespace) for s in rule.services):
                    out.append({**_ref(o), "rule": index, "hosts": list(rule.hosts),
                                "matches": rule_raw.get("match") or []})
            for entry in spec.passthrough:
                if self._means_it(entry.destination, o.resource.namespace):
                    out.append({**_ref(o), "passthrough": list(entry.sni_hosts)})
        return out

    def external_services(self) -> list[dict[str, Any]]:
        """The ExternalServices declaring the host: its ports, and its addresses (none: the
        name is resolved by DNS when a connection is opened)."""
        out = []
        for o in self.external:
            spec = o.resource.spec
            assert isinstance(spec, ExternalServiceSpec)
            host = next(h for h in spec.hosts if host_matches(h, self.service[0]))
            out.append({**_ref(o), "host": host,
                        "ports": [{"number": p.number, "protocol": p.protocol,
                                   **({"targetPort": p.target_port} if p.target_port else {})}
                                  for p in spec.ports],
                        "endpoints": list(spec.endpoints),
                        "resolution": "STATIC" if spec.endpoints else "DNS"})
        return out

    def as_json(self, proxies: Iterable[dict[str, Any]], store_version: int) -> dict[str, Any]:
        name, namespace = self.service
        if self.external:
            return self._external_json(store_version)
        names = {p.name for p in self.instances}
        return {
            "service": name, "namespace": namespace, "kind": "mesh",
            "storeVersion": store_version,
            # its `destination_service` label: what `meshctl stat` rows name it
            "metricsName": self.builder.names.metrics_name(name, namespace),
            "instances": [p for p in proxies if p.get("name") in names],
            "routes": self.routes(), "destinationPolicies": self.policies(),
            "authorizationPolicies": self.inbound("AuthorizationPolicy"),
            "requestAuthentications": self.inbound("RequestAuthentication"),
            "peerAuthentication": self.mtls(), "telemetries": self.telemetries(),
            "sidecars": self.sidecars(), "gateways": self.gateways()}

    def _external_json(self, store_version: int) -> dict[str, Any]:
        """An outside host: no sidecar, so no inbound policy, mTLS or Sidecar scope; Routes
        and DestinationPolicies only for an exact host (they do not apply to wildcards)."""
        name, namespace = self.service
        declared = self.external_services()
        exact = any(e["host"] == name for e in declared)
        return {
            "service": name, "namespace": namespace, "kind": "external",
            "storeVersion": store_version,
            # requests are counted under the declared host (one series for a wildcard)
            "metricsName": name if exact else declared[0]["host"],
            "instances": [], "externalServices": declared,
            "routes": self.routes() if exact else [],
            "destinationPolicies": self.policies() if exact else []}


def describe_routes(registry: Registry, reconciler: Reconciler) -> list[web.RouteDef]:
    """The route to mount on the API app (reads: open on loopback, as proxy status)."""

    async def describe(request: web.Request) -> web.Response:
        name, namespace = request.match_info["name"], request.match_info["ns"]
        proxies = registry.proxies()
        objects = await request.app[STORE].list()
        registered = registered_services(proxies)
        names = ServiceNames(registered)
        declared = declared_services(objects, names)
        external: list[StoredObject] = []
        if (name, namespace) not in registered | declared:
            external = external_declaring(objects, name)
            gateways = sorted(p.name for p in proxies if p.mode == "gateway"
                              and (p.service, p.namespace) == (name, namespace))
            if gateways and not external:
                # `proxy-status` lists it under this service name: say what it is instead
                return web.json_response({
                    "error": gateway_message(name, namespace, gateways, objects),
                    "reason": "NotFound", "gateway": gateways,
                    "known": known_names(registered | declared, external_hosts(objects),
                                         name)}, status=404)
            if not external:
                known = known_names(registered | declared, external_hosts(objects), name)
                # the API's error shape, plus the names it knows (close matches first)
                return web.json_response({
                    "error": unknown_message(name, namespace, known), "reason": "NotFound",
                    "known": known}, status=404)
        description = ServiceDescription(objects, registry, (name, namespace), external)
        body = proxies_json(registry, reconciler)
        return web.json_response(description.as_json(body["proxies"], body["storeVersion"]))

    return [web.get("/api/v1/services/{ns}/{name}/describe", describe)]


def gateway_message(name: str, namespace: str, proxies: Sequence[str],
                    objects: Iterable[StoredObject]) -> str:
    """What ``describe service`` says of the name an ingress gateway registered under: it is
    the gateway, not a service taking mesh traffic, and where its own state is."""
    resources = sorted(o.resource.name for o in objects
                       if isinstance(o.resource.spec, GatewaySpec)
                       and o.resource.namespace == namespace)
    which = (f"meshctl describe gateway {resources[0]}" if len(resources) == 1 else
             "meshctl describe gateway NAME (" + (", ".join(resources) or "none applied yet")
             + ")")
    return (f"{name!r} in namespace {namespace} is the ingress gateway (proxies: "
            f"{', '.join(proxies)}), not a mesh service: no sidecar, Route or policy takes "
            f"traffic for it. Its rules: {which}; its proxies: meshctl proxy-status; what it "
            f"sends: meshctl stat --from {name}")

"""``meshctl check`` on Sidecars: selecting nothing, overlapping; Routes and calls leaving a scope.

A Sidecar whose selector matches no registered sidecar scopes nothing (a typo in a label is
the usual cause). A Route in a Sidecar's scope whose backend or mirror names a service outside
it sends that share to a service the scoped callers do not know: their sidecars answer it 503
``no_healthy_upstream`` (and drop the mirror). A scoped sidecar's own metrics tell which mesh
services outside its scope its app called (``404 no_route`` rows, by the host as written).
Services are resolved as the control plane does (controlplane/names.py) over the registered
sidecars, else by their host's form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from meshctl.api.hostnames import service_of
from meshctl.api.kinds import MeshConfigSpec, RouteSpec
from meshctl.api.sidecar import Scope, SidecarSpec
from meshctl.controlplane.names import ServiceNames
from meshctl.controlplane.scoping import sidecar_for
from meshctl.observe.checks import Check, Group, sidecar_names
from meshctl.observe.samples import DST, FLAGS, REPORTER, Scrape
from meshctl.observe.selectorchecks import sidecar_conflicts


def _selected(sidecar: Any, all_sidecars: list[Any], proxies: list[dict[str, Any]]) -> list[str]:
    """Names of the registered sidecars that ``sidecar`` is the Sidecar of."""
    return [str(p.get("name")) for p in proxies
            if p.get("mode", "sidecar") == "sidecar" and sidecar_for(
                all_sidecars, str(p.get("service")), str(p.get("namespace") or "default"),
                p.get("labels") or {}) is sidecar]


def _leaving(route: Any, scope: Scope, namespace: str, names: ServiceNames) -> list[str]:
    """The backends and mirror of ``route`` (in ``scope``) naming services outside it."""
    spec: RouteSpec = route.spec
    found = names.resolve(spec.host, route.namespace) or service_of(spec.host, route.namespace)
    if found is None:  # an outside host: in scope as its Route's namespace's
        if not scope.sees_host(spec.host, route.namespace):
            return []
    elif route.namespace not in (namespace, found[1]) or not scope.sees_service(*found):
        return []  # not in these callers' snapshots at all
    out: list[str] = []
    for i, rule in enumerate(spec.rules):
        targets = [(f"spec.rules[{i}].backends[{j}]", b.service)
                   for j, b in enumerate(rule.backends)]
        if rule.mirror is not None:
            targets.append((f"spec.rules[{i}].mirror", rule.mirror.service))
        for path, service in targets:
            if service is None:
                continue
            target = names.resolve(service, route.namespace) or service_of(service,
                                                                           route.namespace)
            if target is not None and not scope.sees_service(*target):
                out.append(f"{path} {service} (service {target[0]} of namespace {target[1]})")
    return out


def scope_json(sidecars: list[Any], proxy: dict[str, Any]) -> dict[str, Any]:
    """What ``meshctl proxy-config`` says of a proxy's scope: the Sidecar applying to it
    (null: none, the whole mesh), its egress hosts (null: every host) and outbound mode."""
    mode = str(proxy.get("mode") or "sidecar")
    found = sidecar_for(sidecars, str(proxy.get("service")),
                        str(proxy.get("namespace") or "default"), proxy.get("labels") or {}, mode)
    if found is None or not isinstance(found.spec, SidecarSpec):
        return {"sidecar": None, "gateway": mode == "gateway"}
    hosts = found.spec.hosts
    return {"sidecar": f"{found.namespace}/{found.name}",
            "egress": None if hosts is None else [str(h) for h in hosts],
            "outboundTrafficPolicy": found.spec.outbound_traffic}


def _calls_outside(sidecar: Any, scope: Scope, names: ServiceNames,
                   proxies: list[dict[str, Any]], all_sidecars: list[Any],
                   latest: Callable[[str], Scrape | None]) -> list[Check]:
    """Per service ``sidecar`` scopes: the mesh services outside the scope its sidecars'
    apps called (their `404 no_route` requests since each sidecar started)."""
    called: dict[str, dict[str, float]] = {}  # source service -> host as written -> count
    namespace: str = sidecar.namespace
    for p in proxies:
        name = str(p.get("name"))
        if p.get("mode", "sidecar") != "sidecar" or sidecar_for(
                all_sidecars, str(p.get("service")), str(p.get("namespace") or "default"),
                p.get("labels") or {}) is not sidecar:
            continue
        scrape = latest(name)
        for key, count in (scrape.requests.items() if scrape is not None else ()):
            if key[REPORTER] != "source" or key[FLAGS] != "no_route" or count <= 0:
                continue
            host = key[DST].partition(":")[0]  # (an IPv6 literal is no mesh name anyway)
            found = names.resolve(host, namespace)
            if found is not None and not scope.sees_service(*found):
                hosts = called.setdefault(str(p.get("service")), {})
                hosts[host] = hosts.get(host, 0.0) + count
    return [Check(f"Service {service} of {namespace} (Sidecar {namespace}/{sidecar.name})",
                  "warn", "called hosts outside the Sidecar's egress hosts (404 no_route): "
                  + ", ".join(f"{h} ({int(n)} requests)" for h, n in sorted(hosts.items())),
                  "if it needs them, add them to the Sidecar's egress hosts (e.g. 'b/api' "
                  "or 'b/*')")
            for service, hosts in sorted(called.items())]


def sidecar_checks(sidecars: Iterable[Any], routes: Iterable[Any], meshes: Iterable[Any],
                   proxies: list[dict[str, Any]],
                   latest: Callable[[str], Scrape | None] = lambda name: None) -> list[Group]:
    """One check per Sidecar, one per Route sending outside a Sidecar's scope, one per
    scoped service that called outside it (``latest``: a proxy's last metrics scrape) and one
    per two Sidecars selecting the same sidecars (observe/selectorchecks.py); no group when
    there is no Sidecar."""
    items = sorted((s for s in sidecars if isinstance(s.spec, SidecarSpec)),
                   key=lambda s: (s.namespace, s.name))
    if not items:
        return []
    mesh = next((m.spec for m in meshes if isinstance(m.spec, MeshConfigSpec)), MeshConfigSpec())
    names = sidecar_names(proxies)
    route_list = sorted((r for r in routes if isinstance(r.spec, RouteSpec)),
                        key=lambda r: (r.namespace, r.name))
    checks: list[Check] = []
    for s in items:
        name = f"Sidecar {s.namespace}/{s.name}"
        selected = _selected(s, items, proxies)
        what = ("namespace " + s.namespace if s.spec.labels is None else
                ",".join(f"{k}={v}" for k, v in s.spec.labels) + " in " + s.namespace)
        if not selected and _matches_any(s, proxies):  # each is another Sidecar's
            checks.append(Check(name, "warn", f"scopes no sidecar ({what}): each it selects "
                                "gets another Sidecar, see below"))
        elif not selected:
            checks.append(Check(name, "warn", f"selects no registered sidecar ({what})",
                                "check workloadSelector.labels against the sidecars' --labels "
                                "(and app = their --service), and metadata.namespace"))
        else:
            checks.append(Check(name, "ok", f"scopes {len(selected)} sidecar(s) ({what})"))
        if s.spec.hosts is None:
            continue
        scope = Scope(s.spec.hosts, s.namespace, mesh.trust_domain)
        checks += _calls_outside(s, scope, names, proxies, items, latest)
        for r in route_list:
            leaving = _leaving(r, scope, s.namespace, names)
            if leaving:
                checks.append(Check(
                    f"Route {r.namespace}/{r.name} for {name}", "warn",
                    "sends outside the Sidecar's egress hosts: " + "; ".join(leaving),
                    "the sidecars it scopes do not know that service: they answer that share "
                    "503 no_healthy_upstream (and drop a mirror); add its host to the "
                    "Sidecar's egress hosts"))
    checks += sidecar_conflicts(items, proxies)
    return [Group("Sidecars", tuple(checks))]


def _matches_any(sidecar: Any, proxies: list[dict[str, Any]]) -> bool:
    """Whether ``sidecar``'s selector matches a registered sidecar of its namespace (whether
    or not another Sidecar is the one applied to it)."""
    return any(p.get("mode", "sidecar") == "sidecar"
               and str(p.get("namespace") or "default") == sidecar.namespace
               and sidecar.spec.selects(str(p.get("service")), p.get("labels") or {})
               for p in proxies)


def sidecar_warnings(sidecars: Iterable[Any], proxies: list[dict[str, Any]]) -> list[str]:
    """``meshctl apply``'s warnings: the applied Sidecars whose selector matches no registered
    sidecar of their namespace (a label typo scopes nothing)."""
    return [f"Sidecar {s.namespace}/{s.name}: selects no registered sidecar of namespace "
            f"{s.namespace}" + ("" if s.spec.labels is None else " with " + ",".join(
                f"{k}={v}" for k, v in s.spec.labels)) + " (labels are a sidecar's --labels "
            "and app = its --service; see docs/resources.md#sidecar)"
            for s in sidecars if isinstance(s.spec, SidecarSpec) and not _matches_any(s, proxies)]

"""``meshctl check``: grouped health checks over the proxies list (their sync state, protocols,
gateways' trust and versions), store errors, certificates, the control plane's end-user
authentication keys and how its API is served."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from meshctl.controlplane.names import ServiceNames

CERT_LIFETIME_S = 24 * 3600.0  # assumed lifetime when a proxy reports no issue time
# Sidecars renew at 50-70% of the lifetime: with less than 20% left, renewal is overdue.
WARN_SHARE_LEFT = 0.2


@dataclass(frozen=True, slots=True)
class Check:
    """One line of ``meshctl check``: ok, warn or fail, with a hint when not ok."""

    name: str
    state: str  # ok | warn | fail
    detail: str = ""
    hint: str = ""

    def as_json(self) -> dict[str, str]:
        return {"name": self.name, "state": self.state, "detail": self.detail, "hint": self.hint}


@dataclass(frozen=True, slots=True)
class Group:
    title: str
    checks: tuple[Check, ...] = field(default_factory=tuple)

    def as_json(self) -> dict[str, Any]:
        return {"title": self.title, "checks": [c.as_json() for c in self.checks]}


def _ts(value: str) -> float | None:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


def proxy_checks(proxies: list[dict[str, Any]]) -> Group:
    # (these build Checks from this module)
    from meshctl.observe.gatewaychecks import (
        gateway_certificate_check,
        gateway_trust_check,
        identity_sharing_check,
    )
    from meshctl.observe.skew import version_check

    checks: list[Check] = []
    if not proxies:
        checks.append(Check("proxies registered", "warn", "no proxy is connected",
                            "start sidecars with --control-plane HOST:PORT"))
    unsynced = [p["name"] for p in proxies if not p.get("synced")]
    checks.append(Check("every proxy synced", "fail" if unsynced else "ok",
                        ", ".join(unsynced), "see `meshctl proxy-status`; a proxy that stays "
                        "unsynced is disconnected or rejected its last snapshot"
                        if unsynced else ""))
    idle = [p["name"] for p in proxies if p.get("app") == "not_serving"]
    checks.append(Check("every app serving", "warn" if idle else "ok", ", ".join(idle),
                        "their endpoints are withdrawn until the app answers its sidecar's "
                        "probe (--app-probe); see `curl <admin>/ready` for the probe's error"
                        if idle else ""))
    nacked = [f"{p['name']}: {p['nack']}" for p in proxies if p.get("nack")]
    checks.append(Check("no NACKs", "fail" if nacked else "ok", "; ".join(nacked),
                        "fix the resource named in the NACK and re-apply it" if nacked else ""))
    checks.append(protocol_check(proxies))
    checks += [gateway_trust_check(proxies), gateway_certificate_check(proxies),
               identity_sharing_check(proxies)]
    checks.append(version_check(proxies))
    return Group("Data plane", tuple(checks))


def protocol_check(proxies: list[dict[str, Any]]) -> Check:
    """A service whose sidecars disagree on ``--app-protocol tcp``: the control plane keeps it
    HTTP and leaves the tcp ones out of every snapshot (snapshots.py), so they take no traffic.
    Grouped by service name, as the snapshots group endpoints."""
    by_service: dict[str, dict[str, list[str]]] = {}
    for p in proxies:
        if p.get("mode", "sidecar") == "sidecar" and p.get("service"):
            protocol = "tcp" if p.get("appProtocol") == "tcp" else "http"
            by_service.setdefault(str(p["service"]), {}).setdefault(protocol, []).append(
                str(p["name"]))
    mixed = {svc: names for svc, names in sorted(by_service.items()) if len(names) == 2}
    if not mixed:
        return Check("one protocol per service", "ok")
    detail = "; ".join(f"{svc}: tcp on {', '.join(sorted(n['tcp']))}, "
                       f"http on {', '.join(sorted(n['http']))}" for svc, n in mixed.items())
    return Check("one protocol per service", "warn", detail,
                 "such a service stays HTTP, served by its http sidecars only; its tcp "
                 "sidecars take no traffic until every sidecar of the service runs with the "
                 "same --app-protocol (finish or roll back the change)")


def config_checks(errors: list[dict[str, Any]]) -> Group:
    detail = "; ".join(f"{e.get('source', '?')}: {e.get('message', e)}" for e in errors)
    return Group("Configuration", (Check(
        "configuration valid", "fail" if errors else "ok", detail,
        "fix or remove the files named above (`meshctl validate -f FILE` explains)"
        if errors else ""),))


def cert_checks(proxies: list[dict[str, Any]], now: float) -> Group:
    checks: list[Check] = []
    for p in proxies:
        expiry = _ts(str(p.get("certExpiry") or ""))
        if expiry is None:
            continue
        issued = _ts(str(p.get("certIssued") or "")) or expiry - CERT_LIFETIME_S
        left = expiry - now
        lifetime = max(expiry - issued, 1.0)
        name = f"{p['name']} certificate"
        if left <= 0:
            checks.append(Check(name, "fail", "expired",
                                "the sidecar cannot renew: check it reaches the control plane"))
        elif left < WARN_SHARE_LEFT * lifetime:
            checks.append(Check(name, "warn", f"expires in {int(left // 60)} min",
                                "rotation should have happened by now: check the sidecar log"))
        else:
            checks.append(Check(name, "ok", f"valid for {int(left // 3600)} h"))
    if not checks:
        checks.append(Check("certificates", "ok", "no proxy reported a certificate (mTLS off)"))
    return Group("Certificates", tuple(checks))


def jwks_checks(status: dict[str, tuple[bool, str | None]]) -> list[Group]:
    """One check per RequestAuthentication ``jwksUri`` (``status``: URI -> (keys held, last
    error)); no group when no resource names one."""
    checks = []
    for uri, (held, error) in sorted(status.items()):
        if error is None and held:
            checks.append(Check(uri, "ok", "keys fetched"))
        elif error is None:
            checks.append(Check(uri, "warn", "not fetched yet",
                                "the control plane fetches it at once; look again in a moment"))
        elif held:
            checks.append(Check(uri, "warn", f"last fetch failed: {error}",
                                "tokens are checked with the keys fetched before; fix the URL "
                                "or the identity provider before those keys are rotated"))
        else:
            checks.append(Check(uri, "fail", f"never fetched: {error}",
                                "every token of its issuer gets 401 jwt_invalid until a fetch "
                                "succeeds: check the URL and that the control plane reaches it"))
    return [Group("End-user authentication (jwksUri)", tuple(checks))] if checks else []


def sidecar_names(proxies: Iterable[dict[str, Any]]) -> ServiceNames:
    """The registered services as the control plane's snapshots know them (sidecars only)."""
    from meshctl.controlplane.names import ServiceNames

    return ServiceNames((str(p["service"]), str(p.get("namespace") or "default"))
                        for p in proxies
                        if p.get("mode", "sidecar") == "sidecar" and p.get("service"))


def tcp_services(proxies: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(name, namespace) of the services whose every sidecar declares a TCP app (as the
    snapshots mark them)."""
    declared: dict[tuple[str, str], set[bool]] = {}
    for p in proxies:
        if p.get("mode", "sidecar") == "sidecar" and p.get("service"):
            key = (str(p["service"]), str(p.get("namespace") or "default"))
            declared.setdefault(key, set()).add(p.get("appProtocol") == "tcp")
    return {key for key, kinds in declared.items() if kinds == {True}}


def _tcp_routes(routes: list[Any], proxies: list[dict[str, Any]]
                ) -> list[tuple[Any, list[str]]]:
    """(Route, its HTTP-only field paths) for each Route about a TCP service, however its
    host names it (`db`, `db.ns`, the FQDN: resolved as the control plane does)."""
    from meshctl.api.rules import http_only_fields

    tcp = tcp_services(proxies)
    names = sidecar_names(proxies)
    return [(r, http_only_fields(r.spec.rules))
            for r in sorted(routes, key=lambda r: (r.namespace, r.name))
            if names.resolve(r.spec.host, r.namespace) in tcp]


def tcp_route_checks(routes: list[Any], proxies: list[dict[str, Any]]) -> list[Group]:
    """One check per Route of a TCP service: warns of the HTTP-only fields that its
    connections never see (``routes``: Resources with a RouteSpec); no group when no Route
    is for a TCP service."""
    checks = []
    for route, ignored in _tcp_routes(routes, proxies):
        name = f"Route {route.namespace}/{route.name} (TCP service {route.spec.host})"
        if not ignored:
            checks.append(Check(name, "ok", "every rule applies to connections"))
            continue
        checks.append(Check(
            name, "warn", "HTTP-only, not applied to its TCP connections: " + ", ".join(ignored),
            "a connection has no request: a rule with an HTTP-only action, or whose match "
            "blocks all have HTTP-only conditions, does not apply to it (docs/traffic.md, TCP "
            "services); remove those fields or rules"))
    return [Group("Routes of TCP services", tuple(checks))] if checks else []


def tcp_route_warnings(routes: list[Any], proxies: list[dict[str, Any]]) -> list[str]:
    """``meshctl apply``'s warnings: the applied Routes of TCP services with HTTP-only
    fields, and those fields."""
    return [f"Route {r.namespace}/{r.name}: {r.spec.host} is a TCP service, whose connections "
            f"never see these HTTP-only fields: {', '.join(ignored)} (the rules with them do "
            "not apply to connections; see docs/traffic.md#tcp-services)"
            for r, ignored in _tcp_routes(routes, proxies) if ignored]


def _passthrough_entries(gateways: list[Any], proxies: list[dict[str, Any]]
                         ) -> list[tuple[Any, int, str, str]]:
    """(Gateway, entry index, destination, state) for each TLS passthrough entry: state
    `tcp`, `http` (its sidecars speak HTTP: they refuse `ami-tcp`, the gateway closes the
    connections `protocol_mismatch`) or `none` (no sidecar registered: `no_route`)."""
    tcp = tcp_services(proxies)
    names = sidecar_names(proxies)

    def state(destination: str, namespace: str) -> str:
        found = names.resolve(destination, namespace)
        return "none" if found is None else "tcp" if found in tcp else "http"
    return [(g, i, e.destination, state(e.destination, g.namespace))
            for g in sorted(gateways, key=lambda g: (g.namespace, g.name))
            for i, e in enumerate(g.spec.passthrough)]


def passthrough_checks(gateways: list[Any], proxies: list[dict[str, Any]]) -> list[Group]:
    """One check per Gateway TLS passthrough entry: its destination must be a TCP service
    (``gateways``: Resources with a GatewaySpec); no group without any entry."""
    checks = []
    for gateway, i, destination, state in _passthrough_entries(gateways, proxies):
        name = f"Gateway {gateway.namespace}/{gateway.name} passthrough[{i}] → {destination}"
        if state == "tcp":
            checks.append(Check(name, "ok", "a TCP service"))
        elif state == "http":
            checks.append(Check(
                name, "warn", f"{destination} is an HTTP service: its connections are closed "
                "(protocol_mismatch)", f"run {destination}'s sidecars with --app-protocol tcp "
                "(its app terminates TLS itself), or route HTTPS to it with a Gateway rule "
                "and --gateway-cert instead"))
        else:
            checks.append(Check(
                name, "warn", f"no sidecar of {destination} is registered: its connections "
                "are closed (no_route)", f"start {destination}'s sidecars with "
                "--app-protocol tcp, or fix the destination's name"))
    return [Group("Gateway TLS passthrough", tuple(checks))] if checks else []


def passthrough_warnings(gateways: list[Any], proxies: list[dict[str, Any]]) -> list[str]:
    """``meshctl apply``'s warnings: applied passthrough entries whose destination's sidecars
    speak HTTP."""
    return [f"Gateway {g.namespace}/{g.name}: spec.passthrough[{i}].destination {dest} is an "
            "HTTP service, whose sidecars refuse passed-through TLS: the gateway closes those "
            "connections (protocol_mismatch; see docs/resources.md#gateway)"
            for g, i, dest, state in _passthrough_entries(gateways, proxies) if state == "http"]


def all_checks(proxies: list[dict[str, Any]], errors: list[dict[str, Any]], now: float
               ) -> list[Group]:
    """Every group after "control plane reachable" (which only the client can judge)."""
    return [proxy_checks(proxies), config_checks(errors), cert_checks(proxies, now)]


def api_transport_check(listen: str, tls: bool) -> Group:
    """Whether the API's bearer tokens and tap data can cross a network in clear: served over
    HTTPS, or bound to loopback only."""
    host = listen.rpartition(":")[0].strip("[]")
    if tls:
        check = Check("API transport", "ok", f"https on {listen}")
    elif host in ("127.0.0.1", "::1", "localhost") or host.startswith("127."):
        check = Check("API transport", "ok", f"plain http on loopback only ({listen})")
    else:
        check = Check("API transport", "warn",
                      f"plain http on {listen}: tokens and tap data cross the network in clear",
                      "meshctl serve --api-tls (or --api-cert/--api-key), and give clients "
                      "https:// with AMI_CA_FILE")
    return Group("Control plane", (check,))


def route_target_checks(objects: list[Any], proxies: list[dict[str, Any]]) -> list[Group]:
    """Warns of each object whose fields name no known service (``objects``: the stored
    Resources; meshctl.observe.refchecks says what is known). Such an object applies, but
    its traffic has nowhere to go, or its policy nothing to select: most likely a typo. No
    group without an object naming services."""
    from meshctl.observe.refchecks import NAMING, unknown_references

    naming = sorted((r for r in objects if isinstance(r.spec, NAMING)),
                    key=lambda r: (r.kind, r.namespace, r.name))
    if not naming:
        return []
    by_object: dict[tuple[str, str, str], list[str]] = {}
    for u in unknown_references(naming, objects, proxies):
        by_object.setdefault(u.resource.key, []).append(u.name)
    checks = [Check(
        f"{kind} {namespace}/{name}", "warn",
        "names no known service: " + ", ".join(dict.fromkeys(missing)),
        "no sidecar of it is registered and no Route, DestinationPolicy, Gateway or "
        "ExternalService declares it: a typo? (meshctl proxy-status lists the registered "
        "services; the object still applies, but its traffic has nowhere to go, or its "
        "policy nothing to select, until such a service exists)")
        for (kind, namespace, name), missing in by_object.items()]
    if not checks:
        checks.append(Check("every Route, policy and Gateway names a known service", "ok"))
    return [Group("Service references", tuple(checks))]

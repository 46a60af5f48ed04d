"""``meshctl proxy-config SECTION NAME``: one part of a sidecar's config dump, filtered.

As ``istioctl proxy-config routes|endpoints|clusters|listeners|secret``: the table of that
part alone, or (``-o json|yaml``) the keys of the dump it is made of.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from meshctl import output
from meshctl.api.durations import format_duration
from meshctl.commands.proxyconfig import (
    _endpoints,
    _routes,
    duration,
    endpoint_health,
)

# the sections, their aliases, and the filters each takes
SECTIONS = {"routes": "routes", "endpoints": "endpoints", "ep": "endpoints",
            "clusters": "clusters", "listeners": "listeners", "secret": "secret"}
FILTERS = {"routes": ("service", "subset"), "endpoints": ("service", "subset", "status"),
           "clusters": ("service", "subset"), "listeners": (), "secret": ()}


@dataclass(frozen=True)
class Filters:
    """--service (--fqdn), --subset, --status: None when not given."""

    service: str | None = None
    subset: str | None = None
    status: str | None = None  # healthy | ejected


def data(section: str, dump: dict[str, Any], filters: Filters) -> dict[str, Any]:
    """The keys of the dump that ``section`` shows, filtered as its table is."""
    snap = _filtered(dump, filters)
    services = snap.get("services") or {}
    if section == "routes":
        routes = snap.get("routes") or {}
        if filters.subset is not None:  # the rules sending traffic to the subset
            for route in routes.values():
                route["rules"] = [r for r in route.get("rules") or []
                                  if _sends_to(filters.subset, r)]
        return {"routes": routes}
    if section == "endpoints":
        wanted = {(n, _address(e)) for n, s in services.items() for e in s["endpoints"]}
        health = {d: {**state, "endpoints": [e for e in state.get("endpoints") or []
                                             if (d.partition("/")[0], e.get("address"))
                                             in wanted]}
                  for d, state in (dump.get("endpointHealth") or {}).items()
                  if d.partition("/")[0] in services}
        return {"services": {n: {"endpoints": s["endpoints"]} for n, s in services.items()},
                "endpointHealth": health}
    if section == "clusters":
        keys = ("namespace", "protocol", "mtls", "policy", "subsets")
        return {"services": {n: {k: s.get(k) for k in keys} for n, s in services.items()},
                "outlier": {d: v for d, v in (dump.get("outlier") or {}).items()
                            if d.partition("/")[0] in services}}
    if section == "listeners":
        return {"listeners": dump.get("listeners") or {},
                "boundListeners": dump.get("boundListeners")}
    return {"certificate": dump.get("certificate")}


def table(section: str, dump: dict[str, Any], filters: Filters) -> str:
    """The section's table (or, for ``secret``, its lines), without a trailing newline."""
    if section == "secret":
        return _secret(dump)
    if section == "listeners":
        return _listeners(dump)
    if not dump.get("snapshot"):
        return "no configuration applied yet"
    snap = _filtered(dump, filters)
    if section == "routes":
        if filters.subset is not None:  # no `all endpoints` row: no rule names the subset
            snap["services"] = {n: s for n, s in snap["services"].items()
                                if n in (snap.get("routes") or {})}
        subset = filters.subset
        keep = None if subset is None else lambda rule: _sends_to(subset, rule)
        text = _routes(snap, keep) if snap.get("routes") or snap.get("services") else "(none)"
    elif section == "endpoints":
        text = _endpoints(snap, dump.get("locality") or {}, dump.get("endpointHealth"))
    else:
        text = _clusters(snap, dump, filters.subset)
    return text.rstrip("\n")


def _filtered(dump: dict[str, Any], f: Filters) -> dict[str, Any]:
    """A copy of the dump's snapshot with only what the filters keep."""
    snap = copy.deepcopy(dump.get("snapshot") or {})
    services = snap.get("services") or {}
    if f.service is not None:
        services = {n: s for n, s in services.items() if _names(n, s, f.service)}
        snap["routes"] = {h: r for h, r in (snap.get("routes") or {}).items()
                          if _names(h, services.get(h) or {}, f.service)}
    if f.subset is not None:
        for service in services.values():
            chosen = _subset_labels(service, f.subset)
            service["endpoints"] = [e for e in service.get("endpoints") or []
                                    if all((e.get("labels") or {}).get(k) == v
                                           for k, v in chosen.items())]
        snap["routes"] = {h: r for h, r in (snap.get("routes") or {}).items()
                          if any(_sends_to(f.subset, rule) for rule in r.get("rules") or [])}
    if f.status is not None:
        health = dump.get("endpointHealth") or {}
        for name, service in services.items():
            service["endpoints"] = [e for e in service.get("endpoints") or []
                                    if _status_is(health, name, _address(e), f.status)]
    if f.subset is not None or f.status is not None:
        services = {n: s for n, s in services.items() if s.get("endpoints")}
    snap["services"] = services
    return snap


def _sends_to(subset: str, rule: dict[str, Any]) -> bool:
    return any(b.get("subset") == subset for b in rule.get("backends") or [])


def _names(key: str, service: dict[str, Any], wanted: str) -> bool:
    """Whether --service WANTED names the service keyed ``key`` (``reviews``, or
    ``reviews.ns`` in another namespace): also as reviews.NS[.svc[.cluster.local]]."""
    if wanted == key:
        return True
    short = key.partition(".")[0]
    namespace = service.get("namespace") or (key.partition(".")[2] or "default")
    return wanted in (f"{short}.{namespace}", f"{short}.{namespace}.svc") or \
        wanted.startswith(f"{short}.{namespace}.svc.")


def _subset_labels(service: dict[str, Any], subset: str) -> dict[str, str]:
    """A subset's labels, as the proxy selects it: a declared subset's, else `version`."""
    for declared in service.get("subsets") or []:
        if declared.get("name") == subset:
            return dict(declared.get("labels") or {})
    return {"version": subset}


def _status_is(health: dict[str, Any], service: str, address: str, wanted: str) -> bool:
    found = endpoint_health(health, service, address)
    ejected = any(entry.get("status") == "EJECTED" for _, entry in found)
    return bool(found) and ejected == (wanted == "ejected")


def _address(endpoint: dict[str, Any]) -> str:
    address = endpoint.get("address") or {}
    return f"{address.get('host')}:{address.get('port')}"


def _clusters(snap: dict[str, Any], dump: dict[str, Any], only: str | None = None) -> str:
    """Istio's clusters are Ami's destinations: each service, and each subset a policy
    declares (`reviews/v3`), with the policy traffic to it gets and its endpoints' health
    (``only``: that subset's rows)."""
    rows = []
    mesh_mode = (snap.get("mesh") or {}).get("mtls") or "DISABLE"
    health = dump.get("endpointHealth") or {}
    panics = dump.get("outlier") or {}
    for name, service in sorted((snap.get("services") or {}).items()):
        host = service.get("policy") or {}
        members = [(name, host, service.get("endpoints") or [])]
        for subset in service.get("subsets") or []:
            labels = subset.get("labels") or {}
            members.append((f"{name}/{subset.get('name')}", subset.get("policy") or host,
                            [e for e in service.get("endpoints") or []
                             if all((e.get("labels") or {}).get(k) == v
                                    for k, v in labels.items())]))
        mode = service.get("mtls") or mesh_mode
        for destination, policy, endpoints in members:
            if only is not None and destination != f"{name}/{only}":
                continue
            rows.append((destination, _lb(policy), _outlier(policy.get("outlier_detection")),
                         _panic(policy.get("outlier_detection"), panics.get(destination)),
                         _limits(policy.get("connection_pool")),
                         _modes(mode, endpoints), _healthy(health, name, endpoints)))
    header = ("DESTINATION", "LB", "OUTLIER DETECTION", "PANIC", "CONNECTION LIMITS", "MTLS",
              "HEALTHY")
    return output.render_table(header, rows) if rows else "(none)"


def _lb(policy: dict[str, Any]) -> str:
    lb = str(policy.get("load_balancer") or "-")
    hashing = policy.get("consistent_hash")
    if lb == "CONSISTENT_HASH" and hashing:
        lb += f" {hashing.get('kind')}" + (f" {hashing['name']}" if hashing.get("name") else "")
        if hashing.get("path"):  # httpCookie
            lb += f" path {hashing['path']}"
        if hashing.get("ttl") is not None:
            lb += f" ttl {format_duration(hashing['ttl'])}"
    warmup = policy.get("warmup")
    if warmup:  # slow start: the window, and the ramp when not Envoy's default
        lb += f" warmup {duration(float(warmup.get('duration') or 0))}"
        shape = [f"min {warmup['minimum_percent']:g}%"
                 if warmup.get("minimum_percent", 10.0) != 10.0 else "",
                 f"aggression {warmup['aggression']:g}" if warmup.get("aggression", 1.0) != 1.0
                 else ""]
        lb += "".join(f" · {part}" for part in shape if part)
    return lb + (" +locality" if policy.get("locality_lb") else "")


def _outlier(o: dict[str, Any] | None) -> str:
    if not o:
        return "-"
    counts = [f"{label} {o[key]}" for key, label in (("consecutive_5xx_errors", "5xx"),
                                                      ("consecutive_gateway_errors", "gateway"))
              if o.get(key)]
    if o.get("split_external_local_origin_errors") and o.get("consecutive_local_origin_failures"):
        counts.append(f"local {o['consecutive_local_origin_failures']}")
    if not counts:
        return "-"  # every counter 0: the proxy installs no detector
    return (f"{', '.join(counts)} · every {o.get('interval'):g}s · eject "
            f"{o.get('base_ejection_time'):g}s · max {o.get('max_ejection_percent')}%")


def _panic(o: dict[str, Any] | None, live: dict[str, Any] | None) -> str:
    threshold = (o or {}).get("min_health_percent") or 0
    if not threshold:
        return "-"
    return f"{threshold}%" + (" (in panic)" if live and live.get("panic") else "")


def _limits(pool: dict[str, Any] | None) -> str:
    if not pool:
        return "-"
    extra = [f"retries {pool['max_retries']}" if pool.get("max_retries") else "",
             f"max age {pool['max_connection_duration']:g}s"
             if pool.get("max_connection_duration") else "",
             "keepalive" if pool.get("tcp_keepalive") is not None else ""]
    return (f"conn {pool.get('max_connections')} · pending {pool.get('max_pending_requests')}"
            f" · requests {pool.get('max_concurrent_requests')}"
            + "".join(f" · {part}" for part in extra if part))


def _modes(mode: str, endpoints: list[dict[str, Any]]) -> str:
    """The destination's mode, and each endpoint a PeerAuthentication sets apart."""
    apart = [f"{_address(e)} {e['mtls']}" for e in endpoints
             if e.get("mtls") and e["mtls"] != mode]
    return mode + (f" ({', '.join(apart)})" if apart else "")


def _healthy(health: dict[str, Any], service: str, endpoints: list[dict[str, Any]]) -> str:
    """Endpoints not ejected / all (`-` without the proxy's live health)."""
    if not health:
        return f"-/{len(endpoints)}"
    ejected = sum(1 for e in endpoints
                  if any(x.get("status") == "EJECTED"
                         for _, x in endpoint_health(health, service, _address(e))))
    return f"{len(endpoints) - ejected}/{len(endpoints)}"


def _listeners(dump: dict[str, Any]) -> str:
    bound = dump.get("boundListeners")
    if bound is None:  # a proxy older than this meshctl: addresses only
        rows = [(k, str(v), k, "-", "-", "-")
                for k, v in sorted((dump.get("listeners") or {}).items())]
    else:
        rows = [(str(b.get("name")), str(b.get("address")), str(b.get("mode")),
                 str(b.get("tls")), str(b.get("connections")), str(b.get("maxConnections")))
                for b in bound]
    header = ("LISTENER", "ADDRESS", "MODE", "TLS", "CONNECTIONS", "LIMIT")
    return output.render_table(header, rows).rstrip("\n") if rows else "(none)"


def _secret(dump: dict[str, Any]) -> str:
    if "certificate" not in dump:
        return "this proxy's /config_dump has no certificate: a proxy older than this meshctl"
    cert = dump["certificate"]
    if cert is None:
        return ("no workload certificate (the mesh and this proxy's inbound do not use mTLS, "
                "or none was issued yet: see meshctl proxy-status)")
    left = int(cert.get("secondsLeft") or 0)
    lines = [
        f"SPIFFE ID:   {cert.get('spiffeId')}",
        f"Serial:      {cert.get('serial')}",
        f"Issuer:      {cert.get('issuer')}",
        f"Not before:  {cert.get('notBefore')}",
        f"Not after:   {cert.get('notAfter')} "
        + (f"({duration(left)} left)" if left > 0 else "(EXPIRED)"),
        f"Chain:       {cert.get('chainLength')} certificates (the leaf and its "
        "intermediates)",
    ]
    renewal = cert.get("renewal")
    if renewal:
        due = renewal.get("dueSeconds")
        lines.append(f"Renewal:     {'due in ' + duration(due) if due is not None else '-'} · "
                     f"{renewal.get('renewals')} renewals · {renewal.get('failures')} failures"
                     + (f" · last error: {renewal['lastError']}" if renewal.get("lastError")
                        else ""))
    roots = [(str(r.get("subject")), str(r.get("serial")), str(r.get("notAfter")))
             for r in cert.get("roots") or []]
    lines += ["", "TRUST BUNDLE ROOTS",
              output.render_table(("SUBJECT", "SERIAL", "NOT AFTER"), roots).rstrip("\n")]
    return "\n".join(lines)

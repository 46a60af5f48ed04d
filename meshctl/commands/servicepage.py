"""``meshctl describe service``: one page of what shapes a service's traffic, from the control
plane's ``/api/v1/services/{ns}/{name}/describe``, ``/api/v1/stat`` and ``/api/v1/check``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any
from urllib.parse import quote, urlencode

from meshctl import output
from meshctl.client import ControlPlaneClient
from meshctl.commands.proxystatus import status_word

STAT_WINDOW = "30s"


def gather(client: ControlPlaneClient, name: str, namespace: str,
           request_json: Any) -> tuple[dict[str, Any] | None, str]:
    """(the page's data, "") or (None, the error to print): the description, plus
    ``metrics`` (None when the control plane serves none) and ``warnings``."""
    status, body = request_json(client, "GET", f"/api/v1/services/{quote(namespace)}/"
                                f"{quote(name)}/describe")
    if status != 200 or not isinstance(body, dict):
        if status == 404 and not (isinstance(body, dict) and "known" in body):
            return None, ("the control plane does not serve /api/v1/services/.../describe "
                          "(it is older than meshctl describe service)")
        return None, str(body.get("error") if isinstance(body, dict) else f"HTTP {status}")
    params = urlencode({"service": body["metricsName"], "window": STAT_WINDOW})
    status, stat = request_json(client, "GET", f"/api/v1/stat?{params}")
    body["metrics"] = ({"window": stat.get("window"), "rows": stat.get("rows") or []}
                       if status == 200 and isinstance(stat, dict) else None)
    status, check = request_json(client, "GET", "/api/v1/check")
    body["warnings"] = (concerning(check, {name, body["metricsName"]})
                        if status == 200 and isinstance(check, dict) else [])
    return body, ""


def concerning(check: dict[str, Any], names: set[str]) -> list[dict[str, str]]:
    """The checks of ``meshctl check`` that are not ok and name the service or one of its
    proxies (`reviews`, `reviews-v2-1`; not `reviews.example.com` nor `myreviews`)."""
    words = [re.compile(rf"(?<![\w.]){re.escape(n)}(?![\w.])") for n in names]
    out = []
    for group in check.get("groups") or []:
        for c in group.get("checks") or []:
            text = f"{c.get('name', '')} {c.get('detail', '')}"
            if c.get("state") != "ok" and any(w.search(text) for w in words):
                out.append({"group": str(group.get("title", "")), **c})
    return out


def render(data: dict[str, Any]) -> str:
    """The text page."""
    external = data.get("kind") == "external"
    lines = [f"{'Host:' if external else 'Service:':<19}{data['service']}",
             f"Namespace:         {data['namespace']}",
             f"Store Version:     {data['storeVersion']}"]
    sections = ((_external, _routes, _policies, _metrics, _warnings) if external else
                (_instances, _routes, _policies, _authorization, _mtls, _authentication,
                 _telemetry, _sidecars, _exposure, _metrics, _warnings))
    for section in sections:
        lines += section(data)
    return "\n".join(lines) + "\n"


def _external(data: dict[str, Any]) -> list[str]:
    """The ExternalServices declaring the host: ports and how its addresses are found."""
    lines = ["External Service:  an outside host (no sidecar: no inbound policy or mTLS)"]
    for e in data["externalServices"]:
        ports = ", ".join(f"{p['number']}/{p['protocol']}"
                          + (f"->{p['targetPort']}" if p.get("targetPort") else "")
                          for p in e["ports"])
        where = ("endpoints " + ", ".join(e["endpoints"]) if e["resolution"] == "STATIC"
                 else "resolved by DNS when connecting")
        lines.append(f"  {_ref('ExternalService', e)}: host {e['host']}, ports {ports}, "
                     f"{where}")
    if not any(e["host"] == data["service"] for e in data["externalServices"]):
        lines.append("  (a wildcard host: Routes and DestinationPolicies do not apply to it)")
    return lines


def _ref(kind: str, entry: dict[str, Any]) -> str:
    origin = entry.get("translatedFrom")
    return f"{kind.lower()}.ami.mesh/{entry['name']} (namespace {entry['namespace']}, " \
           f"version {entry['resourceVersion']}" \
           + (f", translated from {origin})" if origin else ")")


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    return [f"  {line}" for line in output.render_table(headers, rows).splitlines()]


def _none(title: str) -> list[str]:
    return [f"{title + ':':<19}<none>"]


def _instances(data: dict[str, Any]) -> list[str]:
    proxies = sorted(data["instances"], key=lambda p: str(p.get("name")))
    if not proxies:
        return ["Instances:         <none> (no instances registered: what follows applies "
                "once one registers)"]
    return ["Instances:", *_table(
        ["NAME", "VERSION", "ADDRESS", "APP-PORT", "SYNC", "CONFIG-VERSION"],
        [[str(p.get("name")), str(p.get("version")), str(p.get("inbound") or "-"),
          str(p.get("appPort") or "-"), status_word(p), str(p.get("configVersion") or "-")]
         for p in proxies])]


def match_text(block: dict[str, Any]) -> str:
    """One match block in a line: ``headers end-user exact=jason, path prefix=/api``."""
    parts = []
    for field, value in block.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):
            parts += [f"{field} {k} " + " ".join(f"{how}={v}" for how, v in m.items())
                      for k, m in value.items()]
        elif isinstance(value, dict):
            parts.append(f"{field} " + " ".join(f"{k}={v}" for k, v in value.items()))
        elif isinstance(value, list):
            parts.append(f"{field} {','.join(str(v) for v in value)}")
        else:
            parts.append(f"{field}={value}")
    return ", ".join(parts) or "*"


def backend_text(backend: dict[str, Any], host: str) -> str:
    """``v2 100%``; ``ratings/v1 100%`` for another service; ``(all)`` without a subset."""
    service, subset = backend["service"], backend["subset"]
    label = subset or "(all)"
    if service and service != host:
        label = f"{service}/{subset}" if subset else service
    return f"{label} {backend['weight']}%"


def rule_text(rule: dict[str, Any], host: str) -> str:
    """``[jason] headers end-user exact=jason -> v2 100%``, with the rule's extra actions."""
    matches = " | ".join(match_text(m) for m in rule["matches"]) or "*"
    backends = ", ".join(backend_text(b, host) for b in rule["backends"])
    extra = "".join(f" {k}={json.dumps(rule[k])}" if isinstance(rule[k], dict)
                    else f" {k}={rule[k]}"
                    for k in ("timeout", "retries", "fault", "mirror", "rateLimit", "redirect",
                              "directResponse")
                    if k in rule)
    name = f"[{rule['name']}] " if rule.get("name") else ""
    return f"{name}{matches} ->{' ' if backends else ''}{backends}{extra}"


def _routes(data: dict[str, Any]) -> list[str]:
    if not data["routes"]:
        return ["Routes:            <none> (callers send to all its endpoints)"]
    lines = ["Routes:"]
    for r in data["routes"]:
        why = (f"callers in {', '.join(r['callers'])}" if r["via"] == "host"
               else f"host {r['host']}, a backend sends to it")
        lines.append(f"  {_ref('Route', r)}: {why}")
        lines += [f"    {rule_text(rule, r['host'])}" for rule in r["rules"]]
    return lines


def _policies(data: dict[str, Any]) -> list[str]:
    if not data["destinationPolicies"]:
        return ["Destination Policy: <none> (no subsets: defaults for lb, pool, outliers)"]
    lines = ["Destination Policy:"]
    empty = ("WARNING: an outside host's endpoints have no labels: selects none"
             if data.get("kind") == "external" else "WARNING: selects no live endpoint")
    for p in data["destinationPolicies"]:
        lines.append(f"  {_ref('DestinationPolicy', p)}: callers in {', '.join(p['callers'])}")
        rows = [[s["name"], ",".join(f"{k}={v}" for k, v in sorted(s["labels"].items())),
                 str(len(s["endpoints"])), "" if s["endpoints"] else empty]
                for s in p["subsets"]]
        if rows:
            lines += [f"  {line}" for line in _table(["SUBSET", "LABELS", "ENDPOINTS", ""],
                                                       rows)]
        for field, value in p["policy"].items():
            shown = json.dumps(value) if isinstance(value, dict | list) else value
            lines.append(f"    {field}: {shown}")
    return lines


def _authorization(data: dict[str, Any]) -> list[str]:
    items = data["authorizationPolicies"]
    if not items:
        return ["Authorization:     <none> (every caller allowed)"]
    # a dry-run policy decides nothing: said so where its action is (meshctl authz counts it)
    return ["Authorization:", *_table(
        ["NAME", "SELECTOR", "ACTION", "RULES", "VERSION"],
        [[a["name"], a["selector"] or "<namespace>",
          (f"CUSTOM ({a['provider']})" if a.get("provider") else a["action"])
          + (" (dry-run)" if a.get("dryRun") else ""), str(a["rules"]),
          a["resourceVersion"]] for a in items])]


def _decider(name: str | None) -> str:
    return "MeshConfig (the mesh's mode)" if name is None else \
        f"peerauthentication.ami.mesh/{name}"


def _mtls(data: dict[str, Any]) -> list[str]:
    mtls = data["peerAuthentication"]
    lines = [f"mTLS:              {mtls['mode']}, decided by {_decider(mtls['decidedBy'])}"]
    workloads = mtls["workloads"]
    if any((w["mode"], w["decidedBy"]) != (mtls["mode"], mtls["decidedBy"]) for w in workloads):
        lines += _table(["PROXY", "APP-PORT", "MTLS", "DECIDED-BY"],
                        [[w["proxy"], str(w["port"] or "-"), w["mode"],
                          _decider(w["decidedBy"])] for w in workloads])
    return lines


def _authentication(data: dict[str, Any]) -> list[str]:
    items = data["requestAuthentications"]
    if not items:
        return _none("Request Authn")
    return ["Request Authn:", *(f"  requestauthentication.ami.mesh/{a['name']}: issuers "
                                f"{', '.join(a['issuers'])}" for a in items)]


def _telemetry(data: dict[str, Any]) -> list[str]:
    items = data["telemetries"]
    if not items:
        return _none("Telemetry")
    return ["Telemetry:", *(f"  telemetry.ami.mesh/{t['name']}: "
                            + ("namespace-wide" if t["selector"] is None
                               else "selects " + ", ".join(t["proxies"])) for t in items)]


def _sidecars(data: dict[str, Any]) -> list[str]:
    items = data["sidecars"]
    if not items:
        return _none("Sidecar")
    return ["Sidecar:", *(f"  sidecar.ami.mesh/{s['name']}: scopes {', '.join(s['proxies'])}"
                          for s in items)]


def _exposure(data: dict[str, Any]) -> list[str]:
    items = data["gateways"]
    if not items:
        return ["Exposure:          <none> (no Gateway rule routes to it)"]
    lines = ["Exposure:"]
    for g in items:
        if "passthrough" in g:
            what = f"TLS passthrough for {', '.join(g['passthrough'])}"
        else:
            hosts = ", ".join(g["hosts"]) or "any host"
            what = (f"rule {g['rule']}: {hosts}, "
                    + (" | ".join(match_text(m) for m in g["matches"]) or "*"))
        lines.append(f"  gateway.ami.mesh/{g['name']} (namespace {g['namespace']}) {what}")
    return lines


def _metrics(data: dict[str, Any]) -> list[str]:
    metrics = data.get("metrics")
    if metrics is None:
        return ["Metrics:           unavailable (the control plane serves no /api/v1/stat)"]
    rows = [r for r in metrics["rows"] if r.get("rps") or r.get("tcpConnections")]
    if not rows:
        return [f"Metrics:           no traffic in the last {metrics['window']:g}s"]
    return [f"Metrics (last {metrics['window']:g}s):", *_table(
        ["VERSION", "SUCCESS", "RPS", "P99"],
        [[str(r["version"]), _pct(r["successRate"]), f"{r['rps']:.1f}", _ms(r["p99"])]
         for r in rows])]


def _pct(value: Any) -> str:  # as `meshctl stat` shows them
    return "-" if value is None else f"{100 * float(value):.2f}%"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}ms"


def _warnings(data: dict[str, Any]) -> list[str]:
    items = data.get("warnings") or []
    if not items:
        return ["Warnings:          <none> from meshctl check"]
    return ["Warnings (meshctl check):",
            *(f"  {w['state']}: {w['name']}" + (f": {w['detail']}" if w["detail"] else "")
              for w in items)]


def run(args: argparse.Namespace, client: ControlPlaneClient, request_json: Any) -> int:
    """Print the page (or its data with ``-o json|yaml``); 1 for an unknown service."""
    data, error = gather(client, args.name, args.namespace, request_json)
    if data is None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if args.output == "json":
        sys.stdout.write(output.to_json(data))
    elif args.output == "yaml":
        sys.stdout.write(output.to_yaml(data))
    else:
        sys.stdout.write(render(data))
    return 0

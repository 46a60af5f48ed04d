"""How meshctl prints resources: kubectl-style tables per kind, YAML and JSON."""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import yaml

Doc = Mapping[str, Any]
OUTPUT_FORMATS = ("table", "yaml", "json")


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: a wide character (``edges``' 🔒) takes two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces (kubectl's layout), no trailing blanks;
    padded by display width, so a row with an emoji stays aligned with the others."""
    table = [list(headers), *(list(r) for r in rows)]
    widths = [max(display_width(row[i]) for row in table) for i in range(len(headers))]
    lines = ["   ".join(cell + " " * (w - display_width(cell))
                        for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in table]
    return "\n".join(lines) + "\n"


def to_yaml(doc: Doc) -> str:
    """One document as block YAML, keys in their wire order."""
    return yaml.safe_dump(_plain(doc), sort_keys=False, default_flow_style=False)


def to_yaml_stream(docs: Iterable[Doc]) -> str:
    """Documents as a ``---``-separated stream that ``meshctl apply -f`` takes back."""
    return yaml.safe_dump_all([_plain(d) for d in docs], sort_keys=False,
                              default_flow_style=False, explicit_start=True)


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def _plain(doc: Doc) -> Any:
    return json.loads(json.dumps(doc))  # plain dicts/lists so safe_dump accepts them


# -- fields shared by the table columns and by shift/describe ---------------------------------
def status_text(doc: Doc) -> str:
    """``Accepted``, or the first line of the rejection message of the Accepted condition."""
    conditions = (doc.get("status") or {}).get("conditions") or []
    accepted = next((c for c in conditions if c.get("type") == "Accepted"), None)
    if accepted is None or accepted.get("status") != "False":
        return "Accepted"
    lines = str(accepted.get("message") or accepted.get("reason") or "rejected").splitlines()
    more = f" (+{len(lines) - 1} more)" if len(lines) > 1 else ""
    return f"Rejected: {lines[0] if lines else 'rejected'}{more}"


def backend_label(backend: Doc, host: str) -> str:
    """How a backend is named on the command line: its subset, else its service.

    A backend of another service is ``service/subset``; one without a subset is the service.
    """
    service, subset = backend.get("service"), backend.get("subset")
    if subset is None:
        return str(service or host)
    return str(subset) if service in (None, host) else f"{service}/{subset}"


def backend_weight(backend: Doc, backends: Sequence[Doc]) -> int:
    """A backend's weight; a lone backend without one takes all traffic."""
    weight = backend.get("weight")
    return int(weight) if weight is not None else (100 if len(backends) == 1 else 0)


def weights_text(backends: Sequence[Doc], host: str, sep: str = ",", form: str = "{}={}") -> str:
    """``v1=90,v3=10`` (the ``meshctl shift`` syntax) for a rule's backends."""
    return sep.join(form.format(backend_label(b, host), backend_weight(b, backends))
                    for b in backends)


# -- per-kind table columns --------------------------------------------------------------------
Column = tuple[str, Callable[[Doc], str]]


def _spec(doc: Doc) -> Mapping[str, Any]:
    return doc.get("spec") or {}


def _name(doc: Doc) -> str:
    return str(doc.get("metadata", {}).get("name", ""))


def _namespace(doc: Doc) -> str:
    return str(doc.get("metadata", {}).get("namespace", "default"))


def _version(doc: Doc) -> str:
    return str(doc.get("metadata", {}).get("resourceVersion", ""))


def _route_backends(doc: Doc) -> str:
    rules = _spec(doc).get("rules") or []
    if rules and "redirect" in rules[-1]:
        return "(redirect)"
    if rules and "directResponse" in rules[-1]:
        return "(directResponse)"
    return weights_text(rules[-1].get("backends") or [], _spec(doc).get("host", "")) if rules \
        else "<none>"


def _joined(values: Iterable[Any]) -> str:
    text = ",".join(str(v) for v in values)
    return text or "<none>"


def _authz_target(doc: Doc) -> str:
    return str((_spec(doc).get("selector") or {}).get("service", "<all>"))


def _authz_action(d: Doc) -> str:
    """ALLOW, DENY, or CUSTOM with the provider it asks: `CUSTOM (oauth)`; a dry-run policy's
    (`istio.io/dry-run: "true"`, enforcing nothing) as `describe service` writes it:
    `DENY (dry-run)`."""
    spec = _spec(d)
    action = str(spec.get("action", "ALLOW"))
    provider = spec.get("provider")
    if action == "CUSTOM" and isinstance(provider, dict):
        return f"CUSTOM ({provider.get('name')})"
    annotations = (d.get("metadata") or {}).get("annotations") or {}
    # (as meshctl.api.annotations.is_dry_run reads it; not imported: `get` stays light)
    if isinstance(annotations, dict) and annotations.get("istio.io/dry-run") in (
            "true", "True", "TRUE", "1", "t", "T"):
        return f"{action} (dry-run)"
    return action


def _telemetry_selector(doc: Doc) -> str:
    labels = (_spec(doc).get("selector") or {}).get("matchLabels") or {}
    return _joined(f"{k}={v}" for k, v in sorted(labels.items())) if labels else "<namespace>"


def _telemetry_access_log(doc: Doc) -> str:
    entries = _spec(doc).get("accessLogging") or []
    if not entries:
        return "-"
    entry = entries[0]
    if entry.get("disabled"):
        return "off"
    expression = (entry.get("filter") or {}).get("expression")
    return f"on if {expression}" if expression else "on"


def _peer_selector(doc: Doc) -> str:
    """A PeerAuthentication's selector: the service (Ami's form, or Istio's matchLabels with
    `app` alone), `k=v,...` for other labels, `<all>` for the namespace."""
    selector = _spec(doc).get("selector") or {}
    labels = selector.get("matchLabels")
    if not isinstance(labels, dict) or not labels:
        return str(selector.get("service", "<all>"))
    if set(labels) == {"app"}:
        return str(labels["app"])
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _port_modes(doc: Doc) -> str:
    ports = _spec(doc).get("portLevelMtls") or {}
    return _joined(f"{port}={(entry or {}).get('mode', 'UNSET')}"
                   for port, entry in sorted(ports.items(), key=lambda kv: int(kv[0])))


def _mtls(doc: Doc) -> str:
    return str((_spec(doc).get("mtls") or {}).get("mode", "STRICT"))


def _sidecar_selector(doc: Doc) -> str:
    labels = (_spec(doc).get("workloadSelector") or {}).get("labels") or {}
    return _joined(f"{k}={v}" for k, v in labels.items()) if labels else "<namespace>"


def _canary_status(key: str, unset: str) -> Callable[[Doc], str]:
    """A field of a Canary's status (written by the control plane's controller)."""
    return lambda d: str((d.get("status") or {}).get(key, unset))


def _httproute_in_effect(doc: Doc) -> str:
    """`yes`, or the reasons of status.parents' conditions that are not True."""
    parents = (doc.get("status") or {}).get("parents") or []
    if not parents:
        return "-"
    reasons = [str(c.get("reason")) for p in parents for c in p.get("conditions") or []
               if c.get("status") != "True"]
    return _joined(dict.fromkeys(reasons)) if reasons else "yes"


def _gateway_destinations(doc: Doc) -> str:
    """The services a Gateway's rules send to (a rule's destination, or its inline Route
    rule's backends), or what a rule answering itself does."""
    names: list[object] = []
    for rule in _spec(doc).get("rules") or []:
        if "destination" in rule:
            names.append(rule["destination"])
        else:
            names += [b.get("service") for b in rule.get("backends") or []]
            names += ["(redirect)"] if "redirect" in rule else []
            names += ["(directResponse)"] if "directResponse" in rule else []
    return _joined(dict.fromkeys(names))


_KIND_COLUMNS: dict[str, list[Column]] = {
    "Route": [("HOST", lambda d: str(_spec(d).get("host", ""))),
              ("RULES", lambda d: str(len(_spec(d).get("rules") or []))),
              ("BACKENDS", _route_backends)],
    "DestinationPolicy": [
        ("HOST", lambda d: str(_spec(d).get("host", ""))),
        ("SUBSETS", lambda d: _joined(s.get("name") for s in _spec(d).get("subsets") or [])),
        ("LB", lambda d: str(_spec(d).get("loadBalancer", "LEAST_REQUEST"))
         + (" +warmup" if "warmup" in _spec(d) or "warmupDurationSecs" in _spec(d) else ""))],
    "AuthorizationPolicy": [
        ("SERVICE", _authz_target),
        ("ACTION", _authz_action),
        ("RULES", lambda d: str(len(_spec(d).get("rules") or [])))],
    "RequestAuthentication": [
        ("SERVICE", _authz_target),
        ("ISSUERS", lambda d: _joined(r.get("issuer") for r in _spec(d).get("jwtRules") or [])),
        ("KEYS", lambda d: _joined("uri" if "jwksUri" in r else "inline"
                                   for r in _spec(d).get("jwtRules") or []))],
    "PeerAuthentication": [
        ("SELECTOR", _peer_selector),
        ("MTLS", lambda d: str((_spec(d).get("mtls") or {}).get("mode", "UNSET"))),
        ("PORT-MTLS", _port_modes)],
    "MeshConfig": [
        ("MTLS", _mtls),
        ("TRUST-DOMAIN", lambda d: str(_spec(d).get("trustDomain", "cluster.local")))],
    "Gateway": [
        ("LISTEN", lambda d: str(_spec(d).get("listen", "-"))),
        ("DESTINATIONS", _gateway_destinations),
        ("PASSTHROUGH", lambda d: _joined(dict.fromkeys(
            r.get("destination") for r in _spec(d).get("passthrough") or [])))],
    "ExternalService": [
        ("HOSTS", lambda d: _joined(_spec(d).get("hosts") or [])),
        ("PORTS", lambda d: _joined(f"{p.get('number')}/{p.get('protocol')}"
                                    for p in _spec(d).get("ports") or [])),
        ("ENDPOINTS", lambda d: _joined(e.get("address") for e in _spec(d).get("endpoints") or [])
         if _spec(d).get("endpoints") else "(DNS)")],
    "Telemetry": [
        ("SELECTOR", _telemetry_selector),
        ("ACCESS-LOG", _telemetry_access_log),
        ("SAMPLING", lambda d: _joined(f"{t['randomSamplingPercentage']:g}%"
                                       for t in _spec(d).get("tracing") or []
                                       if "randomSamplingPercentage" in t))],
    "Sidecar": [
        ("SELECTOR", _sidecar_selector),
        ("EGRESS", lambda d: _joined(h for e in _spec(d).get("egress") or []
                                     for h in e.get("hosts") or []) if "egress" in _spec(d)
         else "*/*"),
        ("OUTBOUND", lambda d: str((_spec(d).get("outboundTrafficPolicy") or {}).get(
            "mode", "(mesh)")))],
    "HTTPRoute": [
        ("PARENTS", lambda d: _joined(dict.fromkeys(
            str(p.get("name")) + (f".{p['namespace']}" if p.get("namespace") else "")
            for p in _spec(d).get("parentRefs") or []))),
        ("RULES", lambda d: str(len(_spec(d).get("rules") or []) or 1)),
        ("BACKENDS", lambda d: _joined(dict.fromkeys(
            str(b.get("name")) for r in _spec(d).get("rules") or []
            for b in r.get("backendRefs") or []))),
        ("IN-EFFECT", _httproute_in_effect)],
    "GRPCRoute": [],  # an HTTPRoute's (below)
    "Canary": [
        ("SERVICE", lambda d: str(_spec(d).get("service", ""))),
        ("STABLE", lambda d: str(_spec(d).get("stable", ""))),
        ("CANARY", lambda d: str(_spec(d).get("canary", ""))),
        ("WEIGHT", _canary_status("canaryWeight", "-")),
        ("PHASE", _canary_status("phase", "Initializing"))],
}


_KIND_COLUMNS["GRPCRoute"] = _KIND_COLUMNS["HTTPRoute"]


def resource_table(kind: str, docs: Sequence[Doc], all_namespaces: bool = False) -> str:
    """The ``meshctl get`` table of ``kind``: NAME, the kind's columns, VERSION, STATUS.

    VERSION is the resourceVersion (the store keeps no creation time, so there is no AGE).
    """
    columns = table_columns(kind, all_namespaces)
    return render_table([h for h, _ in columns], ([cell(d) for _, cell in columns] for d in docs))


def table_columns(kind: str, all_namespaces: bool = False) -> list[Column]:
    """The columns of ``kind``'s table (also ``meshctl get -w``'s rows)."""
    columns: list[Column] = [("NAME", _name), *_KIND_COLUMNS[kind],
                             ("VERSION", _version), ("STATUS", status_text)]
    if all_namespaces:
        columns.insert(0, ("NAMESPACE", _namespace))
    return columns

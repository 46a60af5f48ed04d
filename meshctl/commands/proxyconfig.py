"""``meshctl proxy-config NAME``: the configuration one sidecar is running, as it sees it.

Like ``istioctl proxy-config``: what the proxy compiled from its last applied snapshot
(listeners, mesh settings, routes, services and endpoints, external services,
authorization), fetched from its
admin listener through the control plane. Privileged (the API token), since it lists the whole
topology that proxy can reach.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from meshctl import output
from meshctl.commands.calls import make_client, reports_errors, request_json


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``proxy-config`` (and its ``log`` form: proxy/loglevels.py's levels)."""
    p = subparsers.add_parser(
        "proxy-config", help="show the configuration one proxy is running (log: its log levels)",
        usage="meshctl proxy-config NAME [-o FORMAT]\n"
              "       meshctl proxy-config routes|endpoints|ep|clusters|listeners|secret NAME "
              "[--service S] [--subset SUBSET] [--status healthy|ejected] [-o FORMAT]\n"
              "       meshctl proxy-config log NAME [--level LEVEL | --level LOGGER:LEVEL,...] "
              "[--reset] [-o FORMAT]",
        description=(__doc__ + _SECTIONS_HELP + _LOG_HELP).replace("``", "`"),  # `code` as in
        # the other helps, not the docstring's ``code``
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="+", metavar="[SECTION|log] NAME",
                   help="proxy name, as meshctl proxy-status lists it; `SECTION NAME`: that "
                        "part only; `log NAME`: its loggers")
    p.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p.add_argument("--service", "--fqdn", metavar="S",
                   help="routes, endpoints, clusters: this service only (reviews, "
                        "reviews.NAMESPACE, reviews.NAMESPACE.svc.cluster.local)")
    p.add_argument("--subset", help="routes, endpoints, clusters: this subset only (routes: "
                                    "the rules sending traffic to it)")
    p.add_argument("--status", choices=("healthy", "ejected"),
                   help="endpoints: only those outlier detection has ejected, or not")
    p.add_argument("--level", metavar="LEVEL|LOGGER:LEVEL,...",
                   help="log: set every Ami logger to LEVEL (debug, info, warning, error, "
                        "critical), or the loggers named (e.g. ami.proxy.router:debug)")
    p.add_argument("--reset", action="store_true",
                   help="log: back to the levels the proxy started with (before --level)")
    p.set_defaults(func=run_proxy_config, parser=p)


_SECTIONS_HELP = """
``meshctl proxy-config SECTION NAME``: one part, as ``istioctl proxy-config SECTION``:
routes, endpoints (ep: with each endpoint's live health), clusters (Ami's destinations:
each service and subset with its policy), listeners, secret (the workload certificate).
"""

_LOG_HELP = """
``meshctl proxy-config log NAME``: a sidecar's loggers and their levels, like ``istioctl
proxy-config log``; ``--level``/``--reset`` change them at run time (a write: the API token).
"""


def run_proxy_config(args: argparse.Namespace) -> int:
    """``proxy-config NAME``, ``proxy-config SECTION NAME`` or ``proxy-config log NAME``;
    usage errors exit 2."""
    words, parser = args.words, args.parser
    if len(words) == 2 and words[0] == "log":
        _no_filters(args, parser)
        args.name = words[1]
        try:
            args.query = log_query(args.level, args.reset)
        except ValueError as exc:
            parser.error(str(exc))
        return run_log(args)
    if args.level is not None or args.reset:
        parser.error("--level and --reset go with `proxy-config log NAME`")
    if len(words) == 2:
        return run_section(args, parser, *words)
    if len(words) != 1 or words == ["log"]:
        parser.error("give NAME, or log NAME, or SECTION NAME (routes, endpoints, clusters, "
                     "listeners, secret)")
    _no_filters(args, parser)
    args.name = words[0]
    return run_dump(args)


def run_section(args: argparse.Namespace, parser: argparse.ArgumentParser, word: str,
                name: str) -> int:
    """``proxy-config SECTION NAME``; an unknown section or a filter it does not take is a
    usage error."""
    from meshctl.commands import proxyconfig_sections as sections  # it imports this module

    section = sections.SECTIONS.get(word)
    if section is None:
        parser.error(f"unknown section {word!r}: give one of routes, endpoints (ep), "
                     "clusters, listeners, secret, log")
    _no_filters(args, parser, sections.FILTERS[section])
    args.name = name
    filters = sections.Filters(args.service, args.subset, args.status)
    args.part = lambda dump: sections.data(section, dump, filters)
    args.show = lambda dump: sections.table(section, dump, filters)
    return run_dump(args)


def _no_filters(args: argparse.Namespace, parser: argparse.ArgumentParser,
                allowed: tuple[str, ...] = ()) -> None:
    """A usage error for a filter given where it does not apply."""
    for option in ("service", "subset", "status"):
        if getattr(args, option) is not None and option not in allowed:
            where = "endpoints" if option == "status" else "routes|endpoints|clusters"
            parser.error(f"--{option} goes with `proxy-config {where} NAME`")


def log_query(level: str | None, reset: bool) -> dict[str, str]:
    """The sidecar's /logging query for ``--level`` and ``--reset`` (empty: just read).

    ``debug`` sets every Ami logger; ``ami.proxy.tcp:debug,ami.proxy.agent:info`` the loggers
    named. The sidecar checks the names and levels (and says which exist)."""
    query = {"reset": "true"} if reset else {}
    for item in (level or "").split(","):
        item = item.strip()
        if not item and level is not None:
            raise ValueError(f"--level {level!r}: give LEVEL or LOGGER:LEVEL,...")
        if not item:
            continue
        name, sep, value = item.rpartition(":")
        if sep and not (name and value):
            raise ValueError(f"--level {item!r}: give LEVEL or LOGGER:LEVEL")
        query[name or "level"] = value
    return query


@reports_errors
def run_log(args: argparse.Namespace) -> int:
    """Read (or set, then read) the proxy's levels; 1 when that cannot be done."""
    path = f"/api/v1/proxies/{quote(args.name, safe='')}/logging"
    if args.query:
        path += "?" + urlencode(args.query)
    body = _ask(args, "POST" if args.query else "GET", path)
    if not _printed_as_data(args, body):
        print(output.render_table(("LOGGER", "LEVEL"), sorted(body["loggers"].items())),
              end="")
    return 0


@reports_errors
def run_dump(args: argparse.Namespace) -> int:
    """Print the proxy's running config (``args.part``/``args.show``: one section's data and
    table); 1 when it cannot be had."""
    body = _ask(args, "GET", f"/api/v1/proxies/{quote(args.name, safe='')}/config_dump")
    part: Callable[[Any], Any] = getattr(args, "part", lambda dump: dump)
    show: Callable[[Any], str] = getattr(args, "show", render)
    if not _printed_as_data(args, part(body)):
        print(show(body))
    return 0


def _ask(args: argparse.Namespace, method: str, path: str) -> Any:
    """The control plane's JSON answer; any other status ends the command with its error."""
    status, body = request_json(make_client(args), method, path)
    if status != 200:
        message = body.get("error", body) if isinstance(body, dict) and body else status
        raise SystemExit(f"error: {message}")
    return body


def _printed_as_data(args: argparse.Namespace, body: Any) -> bool:
    """Print `body` as JSON or YAML when `-o` asks for it; False for the table."""
    if args.output == "json":
        print(output.to_json(body), end="")
    elif args.output == "yaml":
        print(output.to_yaml(body), end="")
    else:
        return False
    return True


def render(dump: dict[str, Any]) -> str:
    """The readable summary: one block per part of the snapshot."""
    snap = dump.get("snapshot") or {}
    if not snap:
        return "no configuration applied yet"
    node, mesh = snap.get("node") or {}, snap.get("mesh") or {}
    labels = ",".join(f"{k}={v}" for k, v in sorted((node.get("labels") or {}).items()))
    listeners = ", ".join(f"{k} {v}" for k, v in sorted((dump.get("listeners") or {}).items()))
    lines = [
        f"Config version:  {dump.get('version')}",
        f"Node:            {node.get('namespace')}/{node.get('service')} ({labels or 'no labels'})",
        f"Listeners:       {listeners or '-'}",
        f"Mesh:            mTLS {mesh.get('mtls')} · trust domain {mesh.get('trust_domain')} · "
        f"outside hosts {'ALLOW_ANY' if mesh.get('allow_any_outbound') else 'REGISTRY_ONLY'} · "
        f"access log {'on' if mesh.get('access_log') else 'off'}",
        *_scope(dump.get("sidecarScope"), snap),
        *_peer_modes(snap),
        *_telemetry(snap.get("telemetry")),
        *([f"XFCC kept from:  {_xfcc_peers(mesh)} (gateways, MeshConfig "
           "trustedXfccIdentities)"] if mesh.get("trusted_xfcc") else []),
        "", "ROUTES", _routes(snap).rstrip("\n"), "", "ENDPOINTS",
        _endpoints(snap, dump.get("locality") or {}, dump.get("endpointHealth")).rstrip("\n"),
    ]
    panics = dump.get("outlier") or {}
    if panics:
        lines += ["", "PANIC THRESHOLDS (outlierDetection.minHealthPercent)",
                  _panics(panics).rstrip("\n")]
    external = snap.get("external") or {}
    if external:
        lines += ["", "EXTERNAL SERVICES", _external(external).rstrip("\n")]
    gateway = snap.get("gateway_rules") or []
    if gateway:
        lines += ["", "GATEWAY RULES", _gateway(gateway).rstrip("\n")]
    passthrough = snap.get("gateway_passthrough") or []
    if passthrough:
        rows = [(",".join(p.get("sni_hosts") or []), str(p.get("destination")))
                for p in passthrough]
        lines += ["", "GATEWAY TLS PASSTHROUGH",
                  output.render_table(("SNI HOSTS", "DESTINATION"), rows).rstrip("\n")]
    authentication = snap.get("authentication") or []
    if authentication:
        issuers = list(dict.fromkeys(  # an issuer may have rules in several policies
            str(r.get("issuer")) for a in authentication for r in a.get("jwt_rules") or []))
        lines += ["", f"AUTHENTICATION: issuers {', '.join(issuers)} "
                      "(RequestAuthentication; -o yaml shows the keys)"]
    authorization = snap.get("authorization") or []
    if authorization:
        providers = sorted({str(a.get("provider")) for a in authorization
                            if a.get("action") == "CUSTOM"})
        custom = f"; CUSTOM, checked by provider {', '.join(providers)}" if providers else ""
        audits = sorted(str(a.get("name")) for a in authorization if a.get("action") == "AUDIT")
        audit = f"; AUDIT, logging what {', '.join(audits)} match" if audits else ""
        lines += ["", f"AUTHORIZATION: {len(authorization)} policies{custom}{audit} "
                      "(-o yaml shows them)"]
    return "\n".join(lines)


def _telemetry(telemetry: dict[str, Any] | None) -> list[str]:
    """What a Telemetry makes differ from the mesh's line above; none without one."""
    if not telemetry:
        return []
    parts = []
    if telemetry.get("access_log") is not None:
        expression = telemetry.get("filter_expression")
        parts.append("access log " + ("off" if not telemetry["access_log"]
                                      else f"on if {expression}" if expression else "on"))
    if telemetry.get("tracing_sampling") is not None:
        parts.append(f"sampling {telemetry['tracing_sampling'] * 100:g}%")
    if telemetry.get("disable_span_reporting"):
        parts.append("spans not reported")
    return [f"Telemetry:       {' · '.join(parts)} (Telemetry)"] if parts else []


def _scope(scope: Any, snap: dict[str, Any]) -> list[str]:
    """Which Sidecar scopes the proxy, and the services it therefore knows."""
    if not isinstance(scope, dict):
        return []  # a control plane from before Sidecars
    if scope.get("sidecar") is None:
        why = "a gateway: never scoped" if scope.get("gateway") else "no Sidecar applies"
        return [f"Scope:           the whole mesh ({why})"]
    egress = scope.get("egress")
    mode = scope.get("outboundTrafficPolicy")
    services = sorted(snap.get("services") or {})
    external = sorted(snap.get("external") or {})
    return [f"Scope:           Sidecar {scope['sidecar']} · egress "
            f"{', '.join(egress) if egress is not None else '*/* (all)'}"
            + (f" · outside hosts {mode}" if mode else ""),
            f"In scope:        {len(services)} services: {', '.join(services) or '-'}"
            + (f"; {len(external)} external hosts: {', '.join(external)}" if external else "")]


def _peer_modes(snap: dict[str, Any]) -> list[str]:
    """The modes PeerAuthentications make differ from the mesh's: this proxy's inbound, and
    the services it calls (plaintext to DISABLE ones); no line when there is none."""
    lines = []
    if snap.get("own_mtls"):
        lines.append(f"Inbound mTLS:    {snap['own_mtls']} (PeerAuthentication)")
    services = sorted((name, s["mtls"]) for name, s in (snap.get("services") or {}).items()
                      if s.get("mtls"))
    # an endpoint whose sidecar a selector by labels or port makes differ from its service
    services += sorted((f"{name} {_version(e)} ({_address(e)})", e["mtls"])
                       for name, s in (snap.get("services") or {}).items()
                       for e in s.get("endpoints") or [] if e.get("mtls"))
    if services:
        lines.append("Services' mTLS:  " + ", ".join(f"{n} {m}" for n, m in services)
                     + " (PeerAuthentication; plaintext to DISABLE, mTLS to the others)")
    return lines


def _version(endpoint: dict[str, Any]) -> str:
    return str((endpoint.get("labels") or {}).get("version", "unknown"))


def _address(endpoint: dict[str, Any]) -> str:
    address = endpoint.get("address")
    if isinstance(address, dict):
        return f"{address.get('host')}:{address.get('port')}"
    return str(address)


def _routes(snap: dict[str, Any], keep: Callable[[dict[str, Any]], bool] | None = None) -> str:
    """``keep``: the rules to list (proxy-config routes --subset), numbered as in the route."""
    rows = []
    routed = set()
    node = snap.get("node") or {}
    for host, route in sorted((snap.get("routes") or {}).items()):
        routed.add(host)
        for index, rule in enumerate(route.get("rules") or []):
            if keep is not None and not keep(rule):
                continue
            blocks = rule.get("matches") or []
            own = [b for b in blocks if _accepts(b, node)]
            if blocks and not own:
                continue  # for other sources only: this proxy left the rule out
            rows.append((host, rule.get("name") or f"#{index}", _matches({"matches": own}),
                         _action(rule, host)))
    for name in sorted(set(snap.get("services") or {}) - routed):
        rows.append((name, "-", "*", f"{name} (all endpoints)"))
    return output.render_table(("HOST", "RULE", "MATCH", "ACTION"), rows) if rows else "(none)"


def _accepts(block: dict[str, Any], node: dict[str, Any]) -> bool:
    """Whether a match block's sourceLabels / sourceNamespace accept this proxy (as the proxy
    decides when it compiles the snapshot: blocks that do not are not in its config)."""
    namespace = block.get("source_namespace")
    labels = node.get("labels") or {}
    return ((namespace is None or namespace == node.get("namespace"))
            and all(labels.get(k) == v for k, v in block.get("source_labels") or []))


def _matches(rule: dict[str, Any]) -> str:
    blocks = []
    for block in rule.get("matches") or []:
        parts = []
        path = block.get("path")
        if path:
            parts.append(f"path {path['kind']} {path['value']}"
                         + (" (any case)" if block.get("ignore_uri_case") else ""))
        if block.get("methods"):
            parts.append("method " + "|".join(block["methods"]))
        scheme = block.get("scheme")
        if scheme:  # settled per listener: shown, since the table is not per listener
            parts.append(f"scheme {scheme['kind']} {scheme['value']}")
        for kind, items in (("header", block.get("headers")), ("query", block.get("query")),
                            ("without header", block.get("without_headers"))):
            for name, matcher in items or []:
                value = (("present" if matcher.get("present") else "absent")
                         if matcher.get("kind") == "present"
                         else f"{matcher['kind']} {matcher['value']}")
                parts.append(f"{kind} {name} {value}")
        blocks.append(" & ".join(parts) or "*")
    return " or ".join(blocks) or "*"


def _action(rule: dict[str, Any], host: str) -> str:
    redirect = rule.get("redirect")
    if redirect:
        parts = [f"{k}={redirect[k]}" for k in ("scheme", "authority", "port", "uri")
                 if redirect.get(k) is not None]
        return f"redirect {redirect.get('code', 301)} " + " ".join(parts)
    direct = rule.get("direct_response")
    if direct:
        return f"directResponse {direct.get('status')}"
    backends = rule.get("backends") or []
    split = ", ".join(
        f"{b.get('service') or host}{'/' + b['subset'] if b.get('subset') else ''} "
        f"{b.get('weight', 100)}%" for b in backends)
    # (the dump's field names: the snapshot's dataclasses; rate_limit shown as the resource's)
    extras = [shown for name, shown in (("timeout", "timeout"), ("retries", "retries"),
                                        ("fault", "fault"), ("mirror", "mirror"),
                                        ("rewrite", "rewrite"), ("cors", "cors"),
                                        ("rate_limit", "rateLimit")) if rule.get(name)]
    return split + (f" (+{', '.join(extras)})" if extras else "")


def _endpoints(snap: dict[str, Any], balanced: dict[str, Any],
               health: dict[str, Any] | None = None) -> str:
    rows = []
    services = sorted((snap.get("services") or {}).items())
    # a LOCALITY column once some endpoint has one (meshes without localities: as before);
    # PRIORITY and SHARE once some destination is balanced by locality; STATUS and ACTIVE
    # from a proxy's live endpointHealth (none in an older proxy's dump)
    where = any(e.get("locality") for _, s in services for e in s.get("endpoints") or [])
    extra = ((("LOCALITY",) if where else ()) + (("PRIORITY", "SHARE") if balanced else ())
             + (("STATUS", "ACTIVE") if health is not None else ()))
    for name, service in services:
        placed = _placements(name, balanced) if balanced else {}
        for endpoint in service.get("endpoints") or []:
            address = endpoint.get("address") or {}
            labels = endpoint.get("labels") or {}
            hostport = f"{address.get('host')}:{address.get('port')}"
            rows.append((name, hostport,
                         str(labels.get("version", "-")), endpoint.get("identity") or "-",
                         *((_locality(endpoint.get("locality")),) if where else ()),
                         *(_placed(placed.get(hostport, [])) if balanced else ()),
                         *(endpoint_status(health, name, hostport) if health is not None
                           else ())))
        if not service.get("endpoints"):
            rows.append((name, "(none)", "-", "-", *("-" for _ in extra)))
    header = ("SERVICE", "ADDRESS", "VERSION", "IDENTITY", *extra)
    return output.render_table(header, rows) if rows else "(none)"


def endpoint_health(health: dict[str, Any], service: str,
                    address: str) -> list[tuple[str, dict[str, Any]]]:
    """The endpoint's live entries: its service's destination (tag ''), and each of its
    subsets that is a destination of its own (tag 'v2:'), whose ejections are apart."""
    found = []
    for destination, state in sorted(health.items()):
        name, _, subset = destination.partition("/")
        if name != service:
            continue
        for entry in state.get("endpoints") or []:
            if entry.get("address") == address:
                found.append((f"{subset}:" if subset else "", entry))
    return found


def endpoint_status(health: dict[str, Any], service: str, address: str) -> tuple[str, str]:
    """The STATUS and ACTIVE cells: '-' for an endpoint no route of this proxy reaches."""
    found = endpoint_health(health, service, address)
    if not found:
        return "-", "-"
    states = [(tag, _state(entry)) for tag, entry in found]
    status = ("HEALTHY" if all(state == "HEALTHY" for _, state in states)
              else ", ".join(tag + state for tag, state in states))
    requests = sum(int(entry.get("activeRequests") or 0) for _, entry in found)
    connections = sum(int(entry.get("connections") or 0) for _, entry in found)
    return status, f"{requests} req/{connections} conn"


def _state(entry: dict[str, Any]) -> str:
    if entry.get("status") != "EJECTED":
        if entry.get("warmingSeconds"):  # slow start (warmup): its weight rising
            return (f"WARMING ({entry.get('weightPercent'):g}% weight, "
                    f"{duration(float(entry['warmingSeconds']))} left)")
        return str(entry.get("status"))
    left = f"EJECTED ({duration(float(entry.get('ejectedSeconds') or 0))} left)"
    # minHealthPercent: traffic goes to it all the same while its priority is in panic
    return left + (" (panic)" if entry.get("panic") else "")


def duration(seconds: float) -> str:
    """58s, 3m12s, 23h59m, 2d4h: how long until something happens."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h"


def _placements(service: str, balanced: dict[str, Any]) -> dict[str, list[tuple[str, str]]]:
    """Each endpoint of ``service``'s destinations (the service's, its subsets'
    `service/subset`) balanced by locality: (priority, its share now), per destination."""
    placed: dict[str, list[tuple[str, str]]] = {}
    for destination, state in sorted(balanced.items()):
        name, _, subset = destination.partition("/")
        if name != service:
            continue
        tag = f"{subset}:" if subset else ""  # a route's subset: its own priorities
        for index, group in enumerate(state.get("groups") or []):
            # distribute's groups are localities, not priorities: no number
            priority = f"P{index}" if state.get("mode") == "failover" else "-"
            share = f"{group.get('share', 0):g}%"
            for address in group.get("endpoints") or []:
                ejected = " (ejected)" if address in (group.get("ejected") or []) else ""
                # a priority in panic balances over its ejected endpoints too
                panic = " (panic)" if group.get("panic") else ""
                placed.setdefault(address, []).append((tag + priority + ejected + panic,
                                                       tag + share))
    return placed


def _panics(destinations: dict[str, Any]) -> str:
    """One row per destination with a panic threshold: healthy endpoints per priority level
    (one level unless balanced by locality) and whether ejections are ignored now."""
    rows = []
    for name, state in sorted(destinations.items()):
        levels = state.get("levels") or []
        healthy = ", ".join(
            f"{lv.get('healthy')}/{lv.get('endpoints')}{' (panic)' if lv.get('panic') else ''}"
            for lv in levels)
        rows.append((name, f"{state.get('minHealthPercent')}%", healthy,
                     "yes: ejections ignored" if state.get("panic") else "no"))
    return output.render_table(("DESTINATION", "MIN HEALTH", "HEALTHY", "PANIC"), rows)


def _placed(places: list[tuple[str, str]]) -> tuple[str, str]:
    """The PRIORITY and SHARE cells: '-' for an endpoint of no balanced destination."""
    if not places:
        return "-", "-"
    return ", ".join(p for p, _ in places), ", ".join(s for _, s in places)


def _locality(value: Any) -> str:
    """region/zone/subzone from the config dump's {region, zone, subzone}."""
    if not isinstance(value, dict):
        return "-"
    return "/".join(str(value[k]) for k in ("region", "zone", "subzone") if value.get(k)) or "-"


def _external(hosts: dict[str, Any]) -> str:
    rows = [(host, ",".join(f"{number}/{protocol}" for number, protocol in e.get("ports") or []),
             ",".join(e.get("endpoints") or []) or "(DNS: the host name)",
             f"{e.get('namespace')}/{e.get('resource')}")
            for host, e in sorted(hosts.items())]
    return output.render_table(("HOST", "PORTS", "ENDPOINTS", "EXTERNALSERVICE"), rows)


def _gateway(rules: list[dict[str, Any]]) -> str:
    """The gateway's rules in order; once one carries a Route rule, a RULE column (its name,
    else its place) and ACTION (what it does, as the ROUTES table says) for DESTINATION."""
    if not any(r.get("rule") for r in rules):
        plain = [(",".join(r.get("hosts") or []) or "*",
                 _matches({"matches": r.get("matches")}), str(r.get("destination")))
                 for r in rules]
        return output.render_table(("HOSTS", "MATCH", "DESTINATION"), plain)
    rows = [(",".join(r.get("hosts") or []) or "*",
             ((r.get("rule") or {}).get("name") or f"#{i}"),
             _matches({"matches": r.get("matches")}),
             _action(r["rule"], "") if r.get("rule")
             else f"{r.get('destination')} (its Route)")
            for i, r in enumerate(rules)]
    return output.render_table(("HOSTS", "RULE", "MATCH", "ACTION"), rows)


def _xfcc_peers(mesh: dict[str, Any]) -> str:
    """The ids whose XFCC is kept, a trusted gateway's marked as wanting the gateway marker."""
    gateways = set(mesh.get("gateway_xfcc") or ())
    return ", ".join(f"{i} (gateway certificate)" if i in gateways else i
                     for i in mesh["trusted_xfcc"])

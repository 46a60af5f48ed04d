"""``meshctl shift SERVICE 99/1|v1=90,v3=10``: re-weight a route's subsets, wait for every ACK.

Which rule: the route's LAST rule (its default, the one requests fall through to), or the
rule named by ``--rule``. Positional weights (``99/1``) go to that rule's backends in their
declared order and must be as many as there are backends. Named weights (``v1=90,v3=10``) set
those backends; a backend not named gets weight 0, and a name that is not yet a backend is
added (at the end) when the service's DestinationPolicy defines that subset.

Weight 0 keeps the backend (it gets no traffic) instead of dropping it, so the declared order,
and with it the meaning of a positional ``shift``, stays the same from one shift to the next.

Nothing changes when the weights do not sum to 100, a count or subset is wrong, or no route
exists. The update is a PUT conditional on the resourceVersion read; on 409 Conflict the
route is re-read and the shift re-planned, up to 3 times. Then ``GET /api/v1/sync`` waits
until every sidecar has ACKed a snapshot of at least the new store version.
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from meshctl import output
from meshctl.api.hostnames import service_of
from meshctl.client import ControlPlaneClient, ControlPlaneError
from meshctl.commands.calls import make_client, reports_errors, request_json

CONFLICT_RETRIES = 3
_NAMED = re.compile(r"^([a-z0-9][a-z0-9./-]*)=(\d+)$")


class ShiftRefused(Exception):
    """The shift cannot be done as asked; the message says why. Nothing was changed."""


@dataclass(frozen=True, slots=True)
class Weights:
    """Parsed weights: positional (``99/1``) or named (``v1=90,v3=10``), never both."""

    positional: tuple[int, ...] = ()
    named: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Plan:
    """The route document to PUT and the resulting ``(backend label, weight)`` split."""

    route: dict[str, Any]
    split: tuple[tuple[str, int], ...]
    changed: bool


def parse_weights(text: str) -> Weights:
    """``99/1`` or ``v1=90,v3=10``; refuses malformed input and sums other than 100."""
    if "=" in text:
        named: list[tuple[str, int]] = []
        for part in text.split(","):
            match = _NAMED.match(part.strip())
            if match is None:
                raise ShiftRefused(f"cannot read {part!r}: expected SUBSET=WEIGHT like v1=90")
            if any(name == match[1] for name, _ in named):
                raise ShiftRefused(f"subset '{match[1]}' is given twice")
            named.append((match[1], int(match[2])))
        weights = Weights(named=tuple(named))
        values = [w for _, w in named]
    else:
        parts = text.split("/")
        if not all(p.strip().isdigit() for p in parts):
            raise ShiftRefused(f"cannot read {text!r}: expected weights like 99/1 "
                               "or v1=90,v3=10")
        values = [int(p) for p in parts]
        weights = Weights(positional=tuple(values))
    if any(v > 100 for v in values):
        raise ShiftRefused("a weight must be between 0 and 100")
    if sum(values) != 100:
        raise ShiftRefused(f"weights sum to {sum(values)}, must be 100")
    return weights


def plan_shift(route: dict[str, Any], subsets: Sequence[str], weights: Weights,
               rule_name: str | None = None) -> Plan:
    """The route with the chosen rule re-weighted; ``subsets``: those the policy defines."""
    new = copy.deepcopy(route)
    host = str(new["spec"]["host"])
    rules: list[dict[str, Any]] = new["spec"]["rules"]
    rule, where = pick_rule(rules, rule_name, host)
    for answer in ("redirect", "directResponse"):
        if answer in rule:
            raise ShiftRefused(f"{where} of {host} answers with a {answer} and has no "
                               "backends to shift; name a rule with backends (--rule NAME)")
    backends: list[dict[str, Any]] = rule["backends"]
    before = [(output.backend_label(b, host), output.backend_weight(b, backends))
              for b in backends]
    if weights.positional:
        if len(weights.positional) != len(backends):
            labels = ", ".join(label for label, _ in before)
            raise ShiftRefused(
                f"{len(weights.positional)} weight{'' if len(weights.positional) == 1 else 's'}"
                f" given but {where} of {host} has "
                f"{len(backends)} backend{'' if len(backends) == 1 else 's'} ({labels}); "
                "give one weight per backend in that "
                "order, or name them like v1=90,v2=10")
        for backend, weight in zip(backends, weights.positional, strict=True):
            backend["weight"] = weight
    else:
        by_label = {label: b for (label, _), b in zip(before, backends, strict=True)}
        for backend in backends:
            backend["weight"] = 0
        for name, weight in weights.named:
            if name in by_label:
                by_label[name]["weight"] = weight
            elif name in subsets:
                backends.append({"subset": name, "weight": weight})
            else:
                known = ", ".join(sorted(set(subsets) | set(by_label))) or "none"
                raise ShiftRefused(f"unknown subset '{name}' for {host} (known: {known})")
    split = tuple((output.backend_label(b, host), int(b["weight"])) for b in backends)
    return Plan(new, split, changed=split != tuple(before))


def pick_rule(rules: list[dict[str, Any]], name: str | None,
               host: str) -> tuple[dict[str, Any], str]:
    if name is None:
        return rules[-1], "the default (last) rule"
    for rule in rules:
        if rule.get("name") == name:
            return rule, f"rule '{name}'"
    names = ", ".join(str(r["name"]) for r in rules if r.get("name")) or "no rule has a name"
    raise ShiftRefused(f"the route of {host} has no rule named '{name}' (named: {names})")


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``shift``."""
    shift = subparsers.add_parser(
        "shift", help="shift traffic between a service's subsets and wait for the proxies",
        description=__doc__.replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    shift.add_argument("service", metavar="SERVICE")
    shift.add_argument("weights", metavar="WEIGHTS", help="99/1 (declared order) or v1=90,v3=10")
    shift.add_argument("-n", "--namespace", default="default")
    shift.add_argument("--rule", metavar="NAME", help="re-weight this named rule instead of "
                                                      "the last (default) rule")
    shift.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                       help="how long to wait for every sidecar to ACK (default 30)")
    shift.add_argument("--no-wait", action="store_true", help="do not wait for the ACKs")
    shift.set_defaults(func=run_shift)


@reports_errors
def run_shift(args: argparse.Namespace) -> int:
    client = make_client(args)
    try:
        plan, version = _update(client, args)
    except ShiftRefused as exc:
        print(f"error: {exc}; nothing changed", file=sys.stderr)
        return 1
    split = " / ".join(f"{label} {weight}%" for label, weight in plan.split)
    outcome = "applied" if plan.changed else "unchanged"
    if args.no_wait:
        print(f"{args.service}: {split} — {outcome}")
        return 0
    synced, detail = wait_synced(client, version, args.timeout, changed=plan.changed)
    print(f"{args.service}: {split} — {outcome}, {detail}", file=sys.stdout if synced
          else sys.stderr)
    return 0 if synced else 1


def _update(client: ControlPlaneClient, args: argparse.Namespace) -> tuple[Plan, str]:
    return update_weights(client, args.service, args.namespace, parse_weights(args.weights),
                          args.rule)


def update_weights(client: ControlPlaneClient, service: str, namespace: str, weights: Weights,
                   rule: str | None = None) -> tuple[Plan, str]:
    """Plan and PUT the shift; re-plan on a conflicting concurrent write. (plan, version)."""
    for attempt in range(CONFLICT_RETRIES + 1):
        route = route_for(client, service, namespace)
        names = [str(s.get("name")) for s in subsets_for(client, service, namespace)]
        plan = plan_shift(route, names, weights, rule)
        if not plan.changed:
            return plan, str(route["metadata"]["resourceVersion"])
        try:
            stored = client.update(plan.route)  # carries the resourceVersion read: conditional
        except ControlPlaneError as exc:
            if exc.status == 409 and attempt < CONFLICT_RETRIES:
                continue
            raise
        return plan, str(stored["metadata"]["resourceVersion"])
    raise AssertionError("unreachable: the last attempt returns or raises")


def about_service(service: str, namespace: str) -> Callable[[dict[str, Any]], bool]:
    """Whether a resource of ``namespace`` is about ``service``, however either spells it
    (`reviews`, `reviews.ns`, `reviews.ns.svc.cluster.local`; an outside host as written)."""
    target = service_of(service, namespace) or service

    def about(resource: dict[str, Any]) -> bool:
        host = str((resource.get("spec") or {}).get("host", ""))
        return host == service or (service_of(host, namespace) or host) == target
    return about


def route_for(client: ControlPlaneClient, service: str, namespace: str) -> dict[str, Any]:
    """The service's Route (without status); ShiftRefused when there is none."""
    about = about_service(service, namespace)
    routes = [r for r in client.get("Route", None, namespace) if about(r)]
    if not routes:
        raise ShiftRefused(f"no Route for service {service} in namespace {namespace}; "
                           "create one with meshctl apply")
    route: dict[str, Any] = routes[0]
    route.pop("status", None)
    return route


def subsets_for(client: ControlPlaneClient, service: str, namespace: str
                ) -> list[dict[str, Any]]:
    """The subsets (``{name, labels}``) the service's DestinationPolicies define."""
    about = about_service(service, namespace)
    return [dict(s) for p in client.get("DestinationPolicy", None, namespace)
            if about(p) for s in (p["spec"].get("subsets") or [])]


def wait_synced(client: ControlPlaneClient, version: str, timeout: float, *,
                changed: bool = True) -> tuple[bool, str]:
    """Ask the control plane to wait until every sidecar ACKed store version >= ``version``.

    (True, "7 proxies synced in 43 ms") or (False, the lagging proxies or why we cannot tell).
    Without a change (``changed`` False: ``version`` is the route's own, written earlier)
    there is no write to time: (True, "7 proxies in sync").
    """
    path = f"/api/v1/sync?storeVersion={version}&timeout={timeout:g}"
    status, answer = request_json(client, "GET", path, timeout=timeout + 10.0)
    answer = answer if isinstance(answer, dict) else {}
    if status == 200 and answer.get("synced"):
        count = int(answer.get("proxies", 0))
        noun = "proxy" if count == 1 else "proxies"
        if not changed:
            return True, f"{count} {noun} in sync"
        # converged_ms runs from the write (an older control plane: only its own wait)
        took = float(answer.get("converged_ms", answer.get("elapsed_ms")) or 0)
        return True, f"{count} {noun} synced in {took:.0f} ms"
    if status == 504 or answer.get("synced") is False:
        lagging = [_lagging_name(p) for p in answer.get("lagging") or []]
        return False, (f"but {len(lagging)} not synced after {timeout:g} s: "
                       f"{', '.join(lagging) or 'unknown'}")
    if status == 404:
        return False, "but cannot confirm the proxies synced (no /api/v1/sync on this " \
                      "control plane)"
    return False, f"but the sync check failed: HTTP {status} {answer.get('error', '')}".rstrip()


def _lagging_name(proxy: Any) -> str:
    """A lagging proxy's name, with its NACK error when it rejected the config."""
    if not isinstance(proxy, dict):
        return str(proxy)
    nack = f" (NACK: {proxy['nack']})" if proxy.get("nack") else ""
    return f"{proxy.get('name', '?')}{nack}"

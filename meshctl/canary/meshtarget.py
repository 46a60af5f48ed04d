"""The canary loop's view of a real mesh: weights through the control plane's Route (as
``meshctl shift``), metrics from its ``/api/v1/stat`` (as ``meshctl stat``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from meshctl import output
from meshctl.canary.analysis import Measurement
from meshctl.canary.measure import measurement, service_labels, version_label
from meshctl.canary.stepper import CanaryError, CanaryPlan
from meshctl.client import ControlPlaneClient
from meshctl.commands.calls import request_json
from meshctl.commands.shift import (
    ShiftRefused,
    Weights,
    pick_rule,
    plan_shift,
    route_for,
    subsets_for,
    update_weights,
    wait_synced,
)


def current_split(route: dict[str, Any], rule: str | None = None) -> list[tuple[str, int]]:
    """``(label, weight)`` of the rule canary and shift set: the route's default (last) rule,
    or the one named ``rule`` (ShiftRefused when there is none)."""
    host = str(route["spec"]["host"])
    backends = pick_rule(route["spec"]["rules"], rule, host)[0].get("backends") or []
    return [(output.backend_label(b, host), output.backend_weight(b, backends))
            for b in backends]


class MeshTarget:
    """``CanaryTarget`` over a control plane's HTTP API."""

    def __init__(self, client: ControlPlaneClient, plan: CanaryPlan, namespace: str,
                 *, timeout: float = 30.0, rule: str | None = None) -> None:
        self.client = client
        self.plan = plan
        self.namespace = namespace
        self.rule = rule  # the named rule to step (--rule), None: the default (last) rule
        self.timeout = timeout  # for every proxy's ACK of one step
        self.version = version_label(subsets_for(client, plan.service, namespace), plan.target)
        self.labels = service_labels(plan.service, namespace)

    def set_weight(self, weight: int) -> str:
        weights = Weights(named=((self.plan.source, 100 - weight), (self.plan.target, weight)))
        try:
            shift, version = update_weights(self.client, self.plan.service, self.namespace,
                                            weights, self.rule)
        except ShiftRefused as exc:
            raise CanaryError(str(exc)) from None
        synced, detail = wait_synced(self.client, version, self.timeout, changed=shift.changed)
        if not synced:
            raise CanaryError(f"{self.plan.target} at {weight}% applied, {detail}")
        return detail

    def stat(self, window: float) -> dict[str, Any]:
        """The body of ``GET /api/v1/stat`` for the service over ``window`` seconds."""
        query = urlencode({"window": f"{window:g}"})
        status, body = request_json(self.client, "GET", f"/api/v1/stat?{query}")
        if status != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else body
            raise CanaryError(f"cannot read the canary's metrics: /api/v1/stat answered "
                              f"{status} {error or ''}".rstrip())
        return body

    def measure(self, window: float) -> Measurement:
        body = self.stat(window)
        return measurement(body["rows"], float(body["window"]), self.labels, self.version)

    def split_text(self) -> str:
        """The route's current split, e.g. ``v1 70% / v3 30%``."""
        route = route_for(self.client, self.plan.service, self.namespace)
        return " / ".join(f"{label} {w}%" for label, w in current_split(route, self.rule))

    def current_weight(self) -> int:
        route = route_for(self.client, self.plan.service, self.namespace)
        return dict(current_split(route, self.rule)).get(self.plan.target, 0)

    def check(self, weight: int) -> None:
        """Refuse (ShiftRefused) what ``set_weight(weight)`` would refuse, writing nothing."""
        route = route_for(self.client, self.plan.service, self.namespace)
        names = [str(s.get("name")) for s in subsets_for(self.client, self.plan.service,
                                                         self.namespace)]
        plan_shift(route, names, Weights(named=((self.plan.source, 100 - weight),
                                                (self.plan.target, weight))), self.rule)

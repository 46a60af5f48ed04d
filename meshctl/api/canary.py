"""Canary: a canary analysis the control plane runs (Flagger's Canary, as ``meshctl canary``
does from a terminal): step ``canary``'s weight in a service's Route while its metrics hold."""

from __future__ import annotations

from dataclasses import dataclass, field

from meshctl.api import fields as F
from meshctl.api.errors import fail
from meshctl.api.fields import Fields
from meshctl.canary.analysis import Thresholds
from meshctl.canary.stepper import CanaryPlan

# status.phase, as the control plane's controller (meshctl.canary.controller) writes it
INITIALIZING, PROGRESSING, HOLDING = "Initializing", "Progressing", "Holding"
PROMOTING, SUCCEEDED, ROLLED_BACK, FAILED = "Promoting", "Succeeded", "RolledBack", "Failed"
WAITING, WAITING_PROMOTION = "Waiting", "WaitingPromotion"  # held by a confirm-* webhook
DONE = frozenset({SUCCEEDED, ROLLED_BACK, FAILED})  # until the Canary's spec changes

_SERVICE = F.string(F.DNS_LABEL, "a service name (DNS-1123 label)")
_SUBSET = F.string(F.DNS_LABEL, "a subset name (DNS-1123 label)")
_NAME = F.string(F.DNS_SUBDOMAIN, "a DNS-1123 name like reviews", 253)
_RULE = F.string(None, "a rule name")
HOOK_URL = r"^https?://[^\s/?#]+[^\s]*$"

# spec.webhooks[].type: Flagger's webhook types (https://docs.flagger.app/usage/webhooks)
CONFIRM_ROLLOUT, PRE_ROLLOUT, ROLLOUT = "confirm-rollout", "pre-rollout", "rollout"
CONFIRM_TRAFFIC_INCREASE, CONFIRM_PROMOTION = "confirm-traffic-increase", "confirm-promotion"
POST_ROLLOUT, ROLLBACK, EVENT = "post-rollout", "rollback", "event"
HOOK_TYPES = (CONFIRM_ROLLOUT, PRE_ROLLOUT, ROLLOUT, CONFIRM_TRAFFIC_INCREASE,
              CONFIRM_PROMOTION, POST_ROLLOUT, ROLLBACK, EVENT)


@dataclass(frozen=True, slots=True)
class Webhook:
    """One of spec.webhooks: POSTed Flagger's payload at its ``type``'s moment of a run."""

    name: str
    type: str
    url: str
    timeout: float = 10.0
    metadata: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CanarySpec:
    """spec of a Canary: ``route`` None = the namespace's Route for ``service`` (as `meshctl
    shift` finds it); ``rule`` None = that Route's default (last) rule."""

    service: str
    stable: str
    canary: str
    route: str | None = None
    rule: str | None = None
    step_weight: int = 10
    max_weight: int = 100
    interval: float = 30.0
    thresholds: Thresholds = field(default_factory=Thresholds)
    failures: int = 2
    max_holds: int = 0
    webhooks: tuple[Webhook, ...] = ()

    def hooks(self, kind: str) -> tuple[Webhook, ...]:
        """The webhooks of one type, in declared order."""
        return tuple(h for h in self.webhooks if h.type == kind)

    def plan(self) -> CanaryPlan:
        """The CLI's plan of the same analysis (the shared stepping and decision code)."""
        return CanaryPlan(self.service, self.stable, self.canary, self.step_weight,
                          self.interval, self.max_weight, self.failures, self.thresholds,
                          self.max_holds)


def parse_canary(data: object, path: str) -> CanarySpec:
    """Parse Canary.spec."""
    f = Fields(data, path)
    d = CanarySpec("", "", "")
    service = f.required("service", _SERVICE, "")
    stable = f.required("stable", _SUBSET, "")
    canary = f.required("canary", _SUBSET, "")
    route = f.optional("route", _NAME)
    rule = f.optional("rule", _RULE)
    step = f.value("stepWeight", F.integer(1, 100), d.step_weight)
    max_weight = f.value("maxWeight", F.integer(1, 100), d.max_weight)
    interval = f.value("interval", F.duration(minimum=0.1), d.interval)
    thresholds = f.value("thresholds", _parse_thresholds, d.thresholds)
    failures = f.value("failures", F.integer(1), d.failures)
    max_holds = f.value("maxHolds", F.integer(0), d.max_holds)
    webhooks = f.value("webhooks", F.list_of(_parse_webhook), d.webhooks)
    names = [h.name for h in webhooks]
    for index, name in enumerate(names):
        if name in names[:index]:
            f.add(f"{f.at('webhooks')}[{index}].name", f"duplicate webhook name '{name}'")
    if stable and stable == canary:
        f.add(f.at("canary"), f"must differ from stable ('{stable}')")
    if max_weight < step:
        f.add(f.at("maxWeight"), f"must be at least stepWeight ({step}), got {max_weight}")
    f.finish()
    return CanarySpec(service, stable, canary, route, rule, step, max_weight, interval,
                      thresholds, failures, max_holds, webhooks)


def _parse_webhook(data: object, path: str) -> Webhook:
    f = Fields(data, path)
    name = f.required("name", _RULE, "")
    kind = f.required("type", F.enum(HOOK_TYPES), "")
    url = f.required("url", F.string(HOOK_URL, "an http:// or https:// URL"), "")
    timeout = f.value("timeout", F.duration(), 10.0)
    metadata = f.value("metadata", F.string_map(_RULE, _metadata_value), {})
    f.finish()
    return Webhook(name, kind, url, timeout, tuple(metadata.items()))


def _metadata_value(value: object, path: str) -> str:
    if not isinstance(value, str):  # Flagger's metadata is a map of strings
        fail(path, f"expected a string, got {F.describe(value)} (quote it)")
    return value


def _parse_thresholds(data: object, path: str) -> Thresholds:
    f = Fields(data, path)
    d = Thresholds()
    rate = f.value("minSuccessRate", F.number(0, 100), 100 * d.min_success_rate)
    p99 = f.value("maxP99Ms", F.number(0), d.max_p99_ms or 0.0)
    requests = f.value("minRequests", F.integer(1), d.min_requests)
    f.finish()
    # maxP99Ms 0: latency is not judged (as `meshctl canary --max-p99 0`)
    return Thresholds(rate / 100, p99 or None, requests)

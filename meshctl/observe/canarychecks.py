"""``meshctl check``'s Canary group: a Canary whose Route, rule or subsets do not exist (the
controller waits for them, or has stopped), one that stopped, one a webhook gate holds, and one
whose post-rollout hook failed."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshctl.api.canary import CanarySpec
from meshctl.canary.targets import problems
from meshctl.observe.checks import Check, Group

_HINT = ("apply the Route and a DestinationPolicy defining both subsets, or fix the Canary "
         "(meshctl describe canary NAME)")
_FINISHED = ("Succeeded", "RolledBack")


def canary_checks(canaries: Iterable[Any], routes: Iterable[Any], policies: Iterable[Any],
                  statuses: Mapping[tuple[str, str, str], Mapping[str, Any]]) -> list[Group]:
    """One check per Canary (StoredObjects); no group without Canaries."""
    route_docs = [o.to_dict() for o in routes]
    policy_docs = [o.to_dict() for o in policies]
    checks: list[Check] = []
    for obj in canaries:
        spec, ns = obj.resource.spec, obj.resource.namespace
        if not isinstance(spec, CanarySpec):
            continue
        name = f"canary {ns}/{obj.resource.name}"
        issues = problems(spec, ns, [r for r in route_docs if r["metadata"]["namespace"] == ns],
                          [p for p in policy_docs if p["metadata"]["namespace"] == ns])
        status = statuses.get(obj.key) or {}
        if issues:
            checks.append(Check(name, "warn", "; ".join(issues), _HINT))
        elif status.get("phase") == "Failed":
            checks.append(Check(name, "warn", str(status.get("message", "")),
                                "edit or re-create the Canary to start a new run"))
        elif failed := _failed_post_rollout(status):
            checks.append(Check(name, "warn", f"{status.get('phase')}: post-rollout hook "
                                              f"'{failed['name']}': {failed.get('result')}",
                                "what it does after a run (a clean-up, a notice) may not be "
                                "done: see its log and the control plane's"))
        elif status.get("waitingOn"):  # a confirm-* webhook holds the run
            checks.append(Check(name, "warn", f"{status.get('phase')}: waiting on "
                                              f"{status['waitingOn']}",
                                "the run goes on once the webhook answers 2xx (meshctl "
                                "describe canary NAME shows its last answers)"))
        else:
            phase = status.get("phase", "Initializing")
            # a finished run's weight is where it ended, not the route's now (a later shift)
            at = "ended at" if phase in _FINISHED else "at"
            checks.append(Check(name, "ok", f"{phase}, {spec.canary} {at} "
                                            f"{status.get('canaryWeight', 0)}%"))
    return [Group("Canary", tuple(checks))] if checks else []


def _failed_post_rollout(status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The first post-rollout hook whose last answer was not 2xx (status.webhooks)."""
    return next((w for w in status.get("webhooks") or ()
                 if w.get("type") == "post-rollout" and w.get("ok") is False), None)

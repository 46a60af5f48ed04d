"""How a Canary is shown: `meshctl get` columns, the `describe` part, `meshctl check`'s group."""

from __future__ import annotations

from typing import Any

from meshctl import output
from meshctl.api.resources import load_documents
from meshctl.commands.objectpage import describe_text
from meshctl.controlplane.store import StoredObject
from meshctl.observe.canarychecks import canary_checks
from tests.test_canary_controller import BASE

CANARY = """\
apiVersion: ami.mesh/v1alpha1
kind: Canary
metadata: {name: reviews-v3}
spec: {service: reviews, stable: v1, canary: v3, failures: 3}
"""
STATUS = {"phase": "Holding", "canaryWeight": 20, "failedChecks": 1, "heldChecks": 1,
          "message": "hold: only 3 requests (< 20)",
          "lastTransitionTime": "2027-01-15T08:00:10.000Z",
          "lastAnalysis": {"time": "2027-01-15T08:00:10.000Z", "weight": 20, "requests": 3,
                           "successRate": 1.0, "p99Ms": 12.3, "failedChecks": []},
          "events": [{"time": "2027-01-15T08:00:00.000Z", "weight": 20, "phase": "Progressing",
                      "message": "start: v1 80% / v3 20%"}]}


def stored(text: str) -> list[StoredObject]:
    return [StoredObject(r, i + 1) for i, r in enumerate(load_documents(text, "x.yaml"))]


def canary_doc(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return stored(CANARY)[0].to_dict(status)


def test_get_shows_weight_and_phase() -> None:
    table = output.resource_table("Canary", [canary_doc(STATUS), canary_doc()])
    assert table.splitlines() == [
        "NAME         SERVICE   STABLE   CANARY   WEIGHT   PHASE          VERSION   STATUS",
        "reviews-v3   reviews   v1       v3       20       Holding        1         Accepted",
        "reviews-v3   reviews   v1       v3       -        Initializing   1         Accepted"]


def test_describe_shows_the_run() -> None:
    text = describe_text(canary_doc(STATUS), None, None)
    assert ("Phase:             Holding (since 2027-01-15T08:00:10.000Z)\n"
            "Weight:            v1 80% / v3 20%\n"
            "Message:           hold: only 3 requests (< 20)\n"
            "Failed checks:     1 in a row (rolls back at 3)\n"
            "Last analysis:     2027-01-15T08:00:10.000Z at 20%: 3 requests, success 100.00%, "
            "p99 12ms; failed: none\n"
            "Events:\n"
            "  TIME                       WEIGHT   PHASE         MESSAGE\n"
            "  2027-01-15T08:00:00.000Z   20       Progressing   start: v1 80% / v3 20%\n"
            "Spec:\n") in text
    other = describe_text(stored(BASE)[1].to_dict(), None, None)
    assert "Phase:" not in other  # only a Canary has the part


def test_check_warns_of_missing_route_and_stopped_runs_and_reports_the_others() -> None:
    objs = stored(BASE)
    policies = [o for o in objs if o.resource.kind == "DestinationPolicy"]
    routes = [o for o in objs if o.resource.kind == "Route"]
    canary = stored(CANARY)[0]
    [group] = canary_checks([canary], [], policies, {})
    assert [c.as_json() for c in group.checks] == [{
        "name": "canary default/reviews-v3", "state": "warn",
        "detail": "no Route for service reviews in namespace default",
        "hint": "apply the Route and a DestinationPolicy defining both subsets, or fix the "
                "Canary (meshctl describe canary NAME)"}]
    stopped = {"phase": "Failed", "message": "stopped: the Route's weights were changed"}
    [group] = canary_checks([canary], routes, policies, {canary.key: stopped})
    assert (group.checks[0].state, group.checks[0].detail) == ("warn", stopped["message"])
    [group] = canary_checks([canary], routes, policies, {canary.key: STATUS})
    assert (group.checks[0].state, group.checks[0].detail) == ("ok", "Holding, v3 at 20%")
    # a finished run says where it ended: the route may have been re-weighted since
    done = {**STATUS, "phase": "Succeeded", "canaryWeight": 100}
    [group] = canary_checks([canary], routes, policies, {canary.key: done})
    assert (group.checks[0].state, group.checks[0].detail) == ("ok",
                                                                "Succeeded, v3 ended at 100%")
    assert canary_checks([], routes, policies, {}) == []


GATED = {**STATUS, "phase": "WaitingPromotion", "canaryWeight": 100,
         "message": "waiting for promotion: confirm-promotion hook 'ship': HTTP 403",
         "waitingOn": "confirm-promotion hook 'ship': HTTP 403",
         "webhooks": [{"name": "load", "type": "rollout", "result": "HTTP 200",
                       "time": "2027-01-15T08:00:20.000Z"},
                      {"name": "ship", "type": "confirm-promotion", "result": "HTTP 403",
                       "time": "2027-01-15T08:00:20.000Z"}]}


def test_describe_shows_the_webhooks_last_answers() -> None:
    text = describe_text(canary_doc(GATED), None, None)
    assert "Waiting on:        confirm-promotion hook 'ship': HTTP 403\n" in text
    assert ("Webhooks:\n"
            "  NAME   TYPE                LAST RESULT   TIME\n"
            "  load   rollout             HTTP 200      2027-01-15T08:00:20.000Z\n"
            "  ship   confirm-promotion   HTTP 403      2027-01-15T08:00:20.000Z\n"
            "Events:\n") in text
    assert "Webhooks:" not in describe_text(canary_doc(STATUS), None, None)


def test_check_warns_of_a_run_a_webhook_gate_holds() -> None:
    objs = stored(BASE)
    policies = [o for o in objs if o.resource.kind == "DestinationPolicy"]
    routes = [o for o in objs if o.resource.kind == "Route"]
    canary = stored(CANARY)[0]
    [group] = canary_checks([canary], routes, policies, {canary.key: GATED})
    assert group.checks[0].as_json() == {
        "name": "canary default/reviews-v3", "state": "warn",
        "detail": "WaitingPromotion: waiting on confirm-promotion hook 'ship': HTTP 403",
        "hint": "the run goes on once the webhook answers 2xx (meshctl describe canary NAME "
                "shows its last answers)"}


def test_check_warns_of_a_failed_post_rollout_hook() -> None:
    """A run's end is no gate: only status.webhooks says a post-rollout hook failed."""
    objs = stored(BASE)
    policies = [o for o in objs if o.resource.kind == "DestinationPolicy"]
    routes = [o for o in objs if o.resource.kind == "Route"]
    canary = stored(CANARY)[0]
    hook = {"name": "cleanup", "type": "post-rollout", "ok": False, "result": "HTTP 500",
            "time": "2027-01-15T08:00:30.000Z"}
    done = {"phase": "Succeeded", "canaryWeight": 100, "webhooks": [
        {"name": "news", "type": "event", "ok": False, "result": "HTTP 500",
         "time": "2027-01-15T08:00:30.000Z"}, hook]}
    [group] = canary_checks([canary], routes, policies, {canary.key: done})
    assert group.checks[0].as_json() == {
        "name": "canary default/reviews-v3", "state": "warn",
        "detail": "Succeeded: post-rollout hook 'cleanup': HTTP 500",
        "hint": "what it does after a run (a clean-up, a notice) may not be done: see its log "
                "and the control plane's"}
    done["webhooks"][1] = {**hook, "ok": True, "result": "HTTP 200"}  # a failed event: no warn
    [group] = canary_checks([canary], routes, policies, {canary.key: done})
    assert group.checks[0].state == "ok"

"""Canary webhooks end to end: a real control plane (``meshctl serve``) runs declared Canaries
against real sidecars and apps under steady traffic, and calls a real aiohttp webhook receiver
on loopback that records each call and answers as told. Every wait has a deadline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers_mesh import apply_yaml, http_json, wait_for
from tests.hookserver import HANG, HookServer, hook_server_thread
from tests.observe_harness import Traffic
from tests.test_canary_kind_mesh import KindMesh

pytestmark = pytest.mark.timeout(300)

DONE = ("Succeeded", "RolledBack", "Failed")


class HookMesh(KindMesh):
    hooks: HookServer

    def declare_with(self, name: str, hooks: list[tuple[str, str]], **spec: Any) -> None:
        """A v3 Canary (healthy) whose webhooks (name, type) POST to /<name>."""
        doc = {"apiVersion": "ami.mesh/v1alpha1", "kind": "Canary", "metadata": {"name": name},
               "spec": {"service": "reviews", "stable": "v1", "canary": "v3",
                        "stepWeight": 50, "interval": "1s",
                        "thresholds": {"minRequests": 5, "maxP99Ms": 2000},
                        "webhooks": [{"name": n, "type": t, "url": self.hooks.url(n),
                                      "timeout": "2s", "metadata": {"test": name}}
                                     for n, t in hooks], **spec}}
        apply_yaml(self.cp, json.dumps(doc))  # JSON is YAML

    def split(self) -> dict[str, int]:
        """The reviews route's subsets with a weight (a subset at 0 may be listed or not)."""
        return {k: v for k, v in self.weights().items() if v}

    def delete(self, name: str) -> None:
        assert self.meshctl("delete", "canary", name).returncode == 0


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookMesh]:
    with hook_server_thread() as hooks, HookMesh(tmp_path_factory.mktemp("canaryhooks")) as m:
        m.hooks = hooks
        m.build().wait_synced()
        wait_for(lambda: m.call()[0] == 200, 20, "reviews reachable over mTLS")
        with Traffic(m.call):
            yield m


def test_confirm_rollout_then_confirm_promotion_gate_the_run(mesh: HookMesh) -> None:
    """Nothing moves while confirm-rollout says no (`check` warns, `describe` shows the
    answers); once it says yes the run goes to maxWeight and waits there for
    confirm-promotion; once that says yes, v3 is promoted. The event hook hears every event,
    the post-rollout hook the end; each payload is Flagger's."""
    mesh.reset()
    hooks = mesh.hooks
    hooks.answers.update({"gate": 403, "ship": 403})
    mesh.declare_with("gated", [("gate", "confirm-rollout"), ("ship", "confirm-promotion"),
                                ("news", "event"), ("after", "post-rollout")], maxWeight=50)
    doc = wait_for(lambda: mesh.phase("gated", "Waiting"), 30, "the run waiting for approval")
    status = doc["status"]
    assert status["message"] == "waiting for approval: confirm-rollout hook 'gate': HTTP 403"
    assert status["webhooks"][0]["name"] == "gate"
    assert status["webhooks"][0]["result"] == "HTTP 403"
    wait_for(lambda: len(hooks.bodies("gate")) >= 2, 30, "confirm-rollout asked again")
    assert mesh.split() == {"v1": 100}
    gate = hooks.bodies("gate")[0]
    assert gate == {"name": "gated", "namespace": "default", "phase": "Initializing",
                    "checksum": status["specHash"], "type": "confirm-rollout",
                    "metadata": {"test": "gated"}}
    code, check = http_json(mesh.cp.info["api"] + "/api/v1/check")
    assert code == 200, check
    group = next(g for g in check["groups"] if g["title"] == "Canary")
    [item] = [c for c in group["checks"] if c["name"] == "canary default/gated"]
    assert item["state"] == "warn"
    assert item["detail"] == "Waiting: waiting on confirm-rollout hook 'gate': HTTP 403"
    out = mesh.meshctl("describe", "canary", "gated")
    assert out.returncode == 0, out.stderr
    assert "Waiting on:        confirm-rollout hook 'gate': HTTP 403" in out.stdout
    assert "Webhooks:" in out.stdout and "confirm-rollout   HTTP 403" in out.stdout

    hooks.answers["gate"] = 200
    doc = wait_for(lambda: mesh.phase("gated", "WaitingPromotion"), 60,
                   "the run waiting for promotion")
    assert doc["status"]["message"] == ("waiting for promotion: confirm-promotion hook "
                                        "'ship': HTTP 403")
    assert mesh.split() == {"v1": 50, "v3": 50}
    asked = len(hooks.bodies("ship"))
    wait_for(lambda: len(hooks.bodies("ship")) > asked, 30, "another analysis while waiting")
    # The answer is written by the sweep it wakes; an interval short of requests in between (a
    # loaded machine, as in CI) shows Holding meanwhile, not asking the gate: wait for the gate
    # to hold it again, or for an end, which fails below.
    doc = wait_for(lambda: mesh.phase("gated", "WaitingPromotion", *DONE), 30,
                   "the run waiting for promotion still")
    assert doc["status"]["phase"] == "WaitingPromotion", doc["status"]
    assert mesh.split() == {"v1": 50, "v3": 50}

    hooks.answers["ship"] = 200
    doc = wait_for(lambda: mesh.phase("gated", *DONE), 60, "the promotion")
    status = doc["status"]
    assert status["phase"] == "Succeeded", status
    assert mesh.split() == {"v3": 100}
    assert "waitingOn" not in status
    wait_for(lambda: hooks.bodies("after"), 10, "the post-rollout call")
    [after] = hooks.bodies("after")
    assert (after["phase"], after["type"], after["checksum"]) == (
        "Succeeded", "post-rollout", status["specHash"])
    # every event was POSTed, in order (the status keeps the last 10)
    wait_for(lambda: any(b["eventMessage"] == status["message"]
                         for b in hooks.bodies("news")), 10, "the last event's call")
    news = hooks.bodies("news")
    assert [b["eventMessage"] for b in news][-len(status["events"]):] == [
        e["message"] for e in status["events"]]
    assert {b["type"] for b in news} == {"event"}
    assert news[0]["eventType"] == "Normal" and news[0]["phase"] == "Waiting"
    mesh.delete("gated")


def test_failing_pre_rollout_rolls_back_before_any_traffic(mesh: HookMesh) -> None:
    mesh.reset()
    mesh.hooks.answers["smoke"] = 500
    mesh.declare_with("smoke", [("smoke", "pre-rollout")], failures=2)
    doc = wait_for(lambda: mesh.phase("smoke", *DONE), 60, "the run to end")
    status = doc["status"]
    assert status["phase"] == "RolledBack", status
    assert status["message"] == ("roll back: pre-rollout hook 'smoke': HTTP 500, 2 failures "
                                 "in a row: v1 100% / v3 0%")
    assert status["events"][0]["message"] == (
        "failure 1 of 2: pre-rollout hook 'smoke': HTTP 500; not started")
    assert mesh.split() == {"v1": 100}
    assert len(mesh.hooks.bodies("smoke")) == 2
    mesh.delete("smoke")


def test_rollback_hook_rolls_back_at_once(mesh: HookMesh) -> None:
    """A 2xx from the rollback hook during an analysis puts all traffic back on v1, though
    v3 is healthy (Flagger's manual rollback gate)."""
    mesh.reset()
    mesh.hooks.answers["abort"] = 200
    mesh.declare_with("abort", [("abort", "rollback")])
    doc = wait_for(lambda: mesh.phase("abort", *DONE), 60, "the run to end")
    status = doc["status"]
    assert status["phase"] == "RolledBack", status
    assert status["message"] == ("roll back: asked by rollback hook 'abort': HTTP 200: "
                                 "v1 100% / v3 0%")
    assert mesh.split() == {"v1": 100}
    [body] = mesh.hooks.bodies("abort")
    assert body["phase"] == "Progressing" and body["type"] == "rollback"
    mesh.delete("abort")


def test_rollback_hook_aborts_a_run_held_at_its_gate_and_a_failed_post_rollout_shows(
        mesh: HookMesh) -> None:
    """A run Waiting at its confirm-rollout gate is asked the rollback hook each interval; its
    2xx rolls the run back. The post-rollout hook that then fails is in status.webhooks, in
    `describe`, on the dashboard, and `check` warns about it."""
    mesh.reset()
    hooks = mesh.hooks
    hooks.answers.update({"held": 403, "stop": 404, "cleanup": 500})
    mesh.declare_with("held", [("held", "confirm-rollout"), ("stop", "rollback"),
                               ("cleanup", "post-rollout")])
    wait_for(lambda: hooks.bodies("stop"), 30, "the rollback hook asked while Waiting")
    assert hooks.bodies("stop")[0]["phase"] == "Waiting"
    assert mesh.phase("held", "Waiting")
    hooks.answers["stop"] = 200
    doc = wait_for(lambda: mesh.phase("held", *DONE), 30, "the rollback")
    status = doc["status"]
    assert status["phase"] == "RolledBack", status
    assert status["message"] == ("roll back: asked by rollback hook 'stop': HTTP 200: "
                                 "v1 100% / v3 0%")
    assert mesh.split() == {"v1": 100}
    # the post-rollout answer comes after the run's last write: it wakes the controller
    cleanup = wait_for(lambda: _hook_entry(mesh.canary("held"), "cleanup"), 30,
                       "the post-rollout answer in the status")
    assert (cleanup["type"], cleanup["ok"], cleanup["result"]) == (
        "post-rollout", False, "HTTP 500")
    code, check = http_json(mesh.cp.info["api"] + "/api/v1/check")
    assert code == 200, check
    group = next(g for g in check["groups"] if g["title"] == "Canary")
    [item] = [c for c in group["checks"] if c["name"] == "canary default/held"]
    assert (item["state"], item["detail"]) == (
        "warn", "RolledBack: post-rollout hook 'cleanup': HTTP 500")
    out = mesh.meshctl("describe", "canary", "held")
    assert out.returncode == 0, out.stderr
    assert "cleanup   post-rollout      HTTP 500" in out.stdout, out.stdout
    code, state = http_json(mesh.cp.info["api"] + "/api/v1/dashboard/state")
    assert code == 200, state
    [panel] = [c for c in state["canaries"] if c["name"] == "held"]
    assert {w["name"]: w["result"] for w in panel["webhooks"]} == {
        "held": "HTTP 403", "stop": "HTTP 200", "cleanup": "HTTP 500"}
    mesh.delete("held")


def test_a_hanging_rollout_hook_times_out_as_a_failed_check(mesh: HookMesh) -> None:
    mesh.reset()
    mesh.hooks.answers["stuck"] = HANG
    mesh.declare_with("stuck", [("stuck", "rollout")], failures=1)
    doc = wait_for(lambda: mesh.phase("stuck", *DONE), 60, "the run to end")
    status = doc["status"]
    assert status["phase"] == "RolledBack", status
    assert status["message"] == ("roll back: rollout hook 'stuck': timed out after 2s, "
                                 "1 failure in a row: v1 100% / v3 0%")
    assert status["webhooks"] == [{"name": "stuck", "type": "rollout", "ok": False,
                                   "result": "timed out after 2s",
                                   "time": status["lastStepTime"]}]
    assert mesh.split() == {"v1": 100}
    mesh.delete("stuck")


def _hook_entry(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The Canary's status.webhooks entry of hook ``name`` (None before: for wait_for)."""
    return next((w for w in (doc.get("status") or {}).get("webhooks", [])
                 if w["name"] == name), None)

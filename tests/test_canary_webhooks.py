"""Canary webhooks, Flagger's types, on the controller with a fake clock and fake stat rows and
a real aiohttp webhook receiver on loopback: gates, failed checks, rollbacks, fired hooks,
timeouts, payloads, and a hanging hook that holds up no other Canary."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.api.canary import Webhook
from meshctl.api.errors import ValidationError
from meshctl.api.resources import parse_document
from meshctl.canary.controller import _changed
from meshctl.canary.webhooks import Caller, HookResult
from meshctl.controlplane.memstore import MemStore
from tests.hookserver import HANG, HookServer
from tests.test_canary_controller import CANARY, KEY, T0, Rig, make_rig


@pytest.fixture
async def hooks() -> AsyncIterator[HookServer]:
    server = await HookServer().start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def rigs(tmp_path: Path) -> AsyncIterator[Any]:
    """make_rig, the controllers' webhook sessions closed after the test."""
    made: list[Rig] = []

    async def make(canary: dict[str, Any]) -> Rig:
        made.append(await make_rig(tmp_path, canary))
        return made[-1]

    yield make
    for rig in made:
        rig.controller.gates.keep(set())
        await rig.controller.caller.close()


def with_hooks(server: HookServer, *hooks: tuple[str, str], **spec: Any) -> dict[str, Any]:
    """The test Canary with webhooks (name, type), each POSTing to /<name> on ``server``."""
    webhooks = [{"name": n, "type": t, "url": server.url(n), "timeout": "2s",
                 "metadata": {"team": "reviews"}} for n, t in hooks]
    return {**CANARY, "spec": {**CANARY["spec"], "webhooks": webhooks, **spec}}


async def at(rig: Rig, seconds: float) -> dict[str, Any]:
    """Sweep at T0 + ``seconds`` until no gating call is in flight (each answer lets the
    run go on at the same moment, as the running controller's wake-up does), wait for the
    fired calls and record their answers; the status."""
    rig.clock.now = T0 + seconds
    for _ in range(5):
        await rig.controller.sweep()
        if not rig.controller.gates.in_flight():
            break
        await rig.controller.gates.settle()
    await rig.controller.caller.drain()
    await rig.controller.record_fired()  # the fired hooks' answers, as the next sweep would
    return await rig.status()


async def test_confirm_rollout_gates_the_start_until_it_answers_2xx(
        rigs: Any, hooks: HookServer) -> None:
    hooks.answers["gate"] = 403
    rig = await rigs(with_hooks(hooks, ("gate", "confirm-rollout")))
    status = await at(rig, 0)
    assert status["phase"] == "Waiting"
    assert status["message"] == "waiting for approval: confirm-rollout hook 'gate': HTTP 403"
    assert status["waitingOn"] == "confirm-rollout hook 'gate': HTTP 403"
    assert status["webhooks"] == [{"name": "gate", "type": "confirm-rollout", "ok": False,
                                   "result": "HTTP 403", "time": "2027-01-15T08:00:00.000Z"}]
    assert await rig.weights() == {"v1": 100}  # no traffic to the canary yet
    [body] = hooks.bodies("gate")
    assert body == {"name": "reviews-v3", "namespace": "default", "phase": "Initializing",
                    "checksum": status["specHash"], "type": "confirm-rollout",
                    "metadata": {"team": "reviews"}}
    assert (await at(rig, 5))["phase"] == "Waiting"  # asked again at the interval only
    assert len(hooks.bodies("gate")) == 1
    assert (await at(rig, 10))["phase"] == "Waiting"
    assert [b["phase"] for b in hooks.bodies("gate")] == ["Initializing", "Waiting"]
    hooks.answers["gate"] = 200
    status = await at(rig, 20)
    assert status["phase"] == "Progressing" and status["message"] == "start: v1 50% / v3 50%"
    assert "waitingOn" not in status
    assert status["webhooks"][0]["result"] == "HTTP 200"
    assert await rig.weights() == {"v1": 50, "v3": 50}
    # once started, confirm-rollout is not asked again
    await at(rig, 30)
    assert len(hooks.bodies("gate")) == 3


async def test_failing_pre_rollout_counts_as_failed_checks_then_rolls_back(
        rigs: Any, hooks: HookServer) -> None:
    hooks.answers["tests"] = 500
    rig = await rigs(with_hooks(hooks, ("tests", "pre-rollout"),
                                              ("done", "post-rollout")))
    status = await at(rig, 0)
    assert status["phase"] == "Waiting" and status["failedChecks"] == 1
    assert status["message"] == ("failure 1 of 2: pre-rollout hook 'tests': HTTP 500; "
                                 "not started")
    assert "waitingOn" not in status  # a failing check, not a gate
    assert await rig.weights() == {"v1": 100}
    status = await at(rig, 10)
    assert status["phase"] == "RolledBack" and status["canaryWeight"] == 0
    assert status["message"] == ("roll back: pre-rollout hook 'tests': HTTP 500, 2 failures "
                                 "in a row: v1 100% / v3 0%")
    assert await rig.weights() == {"v1": 100, "v3": 0}
    [done] = hooks.bodies("done")  # post-rollout: once, after the rollback
    assert done["phase"] == "RolledBack" and done["type"] == "post-rollout"
    await at(rig, 100)
    assert len(hooks.bodies("tests")) == 2 and len(hooks.bodies("done")) == 1


async def test_passing_pre_rollout_starts_the_run(
        rigs: Any, hooks: HookServer) -> None:
    rig = await rigs(with_hooks(hooks, ("tests", "pre-rollout")))
    status = await at(rig, 0)
    assert status["phase"] == "Progressing" and status["canaryWeight"] == 50
    assert [b["type"] for b in hooks.bodies("tests")] == ["pre-rollout"]


async def test_failing_rollout_hook_is_a_failed_check(
        rigs: Any, hooks: HookServer) -> None:
    rig = await rigs(with_hooks(hooks, ("load", "rollout")))
    await at(rig, 0)
    assert hooks.bodies("load") == []  # asked during analyses, not at the start
    hooks.answers["load"] = 502
    status = await at(rig, 10)
    assert status["phase"] == "Progressing" and status["failedChecks"] == 1
    assert status["message"] == "failure 1 of 2: rollout hook 'load': HTTP 502; stay at 50"
    assert status["lastAnalysis"]["failedChecks"] == ["rollout hook 'load': HTTP 502"]
    assert [b["phase"] for b in hooks.bodies("load")] == ["Progressing"]
    hooks.answers["load"] = 200
    status = await at(rig, 20)
    assert status["message"] == "advance to 100: v1 0% / v3 100%"
    assert status["failedChecks"] == 0


async def test_confirm_traffic_increase_holds_without_failure(
        rigs: Any, hooks: HookServer) -> None:
    canary = with_hooks(hooks, ("more", "confirm-traffic-increase"), maxHolds=1)
    rig = await rigs(canary)
    await at(rig, 0)
    hooks.answers["more"] = 409
    for t in (10, 20):  # maxHolds 1 would roll a traffic hold back: a gate is no such hold
        status = await at(rig, t)
        assert status["phase"] == "Holding" and status["canaryWeight"] == 50
        assert status["message"] == "hold: confirm-traffic-increase hook 'more': HTTP 409"
        assert status["waitingOn"] == "confirm-traffic-increase hook 'more': HTTP 409"
        assert (status["failedChecks"], status["heldChecks"]) == (0, 0)
        assert status["lastAnalysis"]["failedChecks"] == []
    assert await rig.weights() == {"v1": 50, "v3": 50}
    hooks.answers["more"] = 200
    status = await at(rig, 30)
    assert status["message"] == "advance to 100: v1 0% / v3 100%"
    assert "waitingOn" not in status
    assert len(hooks.bodies("more")) == 3


async def test_confirm_promotion_waits_while_the_analysis_goes_on(
        rigs: Any, hooks: HookServer) -> None:
    rig = await rigs(with_hooks(hooks, ("ship", "confirm-promotion")))
    hooks.answers["ship"] = 403
    await at(rig, 0)
    assert (await at(rig, 10))["canaryWeight"] == 100  # advancing is not promoting
    assert hooks.bodies("ship") == []
    status = await at(rig, 20)
    assert status["phase"] == "WaitingPromotion" and status["canaryWeight"] == 100
    assert status["message"] == "waiting for promotion: confirm-promotion hook 'ship': HTTP 403"
    rig.stats.success = 0.5  # the analysis goes on while waiting: a failure still counts
    status = await at(rig, 30)
    assert status["phase"] == "Progressing" and status["failedChecks"] == 1
    rig.stats.success = 1.0
    assert (await at(rig, 40))["phase"] == "WaitingPromotion"
    hooks.answers["ship"] = 200
    status = await at(rig, 50)
    assert status["phase"] == "Promoting"
    assert [b["phase"] for b in hooks.bodies("ship")] == [
        "Progressing", "Progressing", "WaitingPromotion"]
    assert (await at(rig, 50.5))["phase"] == "Succeeded"


async def test_rollback_hook_answering_2xx_rolls_back_at_once(
        rigs: Any, hooks: HookServer) -> None:
    hooks.answers["abort"] = 404  # Flagger's convention: not 2xx means "no rollback asked"
    rig = await rigs(with_hooks(hooks, ("abort", "rollback")))
    await at(rig, 0)
    assert (await at(rig, 10))["canaryWeight"] == 100
    hooks.answers["abort"] = 200
    status = await at(rig, 20)
    assert status["phase"] == "RolledBack" and status["canaryWeight"] == 0
    assert status["message"] == ("roll back: asked by rollback hook 'abort': HTTP 200: "
                                 "v1 100% / v3 0%")
    assert await rig.weights() == {"v1": 100, "v3": 0}
    assert [w["result"] for w in status["webhooks"]] == ["HTTP 200"]


async def test_rollback_hook_is_asked_while_waiting_at_the_confirm_rollout_gate(
        rigs: Any, hooks: HookServer) -> None:
    """Flagger asks rollback hooks while Waiting too: a run held at its gate can be aborted
    (asked each interval, not at the first attempt); its post-rollout hook hears the end."""
    hooks.answers.update({"gate": 403, "abort": 404})
    rig = await rigs(with_hooks(hooks, ("gate", "confirm-rollout"), ("abort", "rollback"),
                                ("done", "post-rollout")))
    assert (await at(rig, 0))["phase"] == "Waiting"
    assert hooks.bodies("abort") == []  # the first attempt: nothing to abort yet
    status = await at(rig, 10)
    assert status["phase"] == "Waiting"
    assert {w["name"]: w["result"] for w in status["webhooks"]} == {
        "gate": "HTTP 403", "abort": "HTTP 404"}
    [body] = hooks.bodies("abort")
    assert (body["phase"], body["type"]) == ("Waiting", "rollback")
    await at(rig, 15)  # not due: asked at the interval only
    assert len(hooks.bodies("abort")) == 1
    hooks.answers["abort"] = 200
    status = await at(rig, 20)
    assert status["phase"] == "RolledBack" and status["canaryWeight"] == 0
    assert status["message"] == ("roll back: asked by rollback hook 'abort': HTTP 200: "
                                 "v1 100% / v3 0%")
    assert "waitingOn" not in status
    assert await rig.weights() == {"v1": 100, "v3": 0}
    [done] = hooks.bodies("done")
    assert done["phase"] == "RolledBack"
    await at(rig, 100)  # over: nobody is asked again
    assert (len(hooks.bodies("abort")), len(hooks.bodies("gate"))) == (2, 3)


async def test_rollback_hook_is_asked_while_waiting_for_promotion(
        rigs: Any, hooks: HookServer) -> None:
    hooks.answers.update({"ship": 403, "abort": 404})
    rig = await rigs(with_hooks(hooks, ("ship", "confirm-promotion"), ("abort", "rollback")))
    for t in (0, 10):
        await at(rig, t)
    assert (await at(rig, 20))["phase"] == "WaitingPromotion"
    assert (await at(rig, 30))["phase"] == "WaitingPromotion"
    hooks.answers["abort"] = 200
    status = await at(rig, 40)
    assert status["phase"] == "RolledBack"
    assert status["message"] == ("roll back: asked by rollback hook 'abort': HTTP 200: "
                                 "v1 100% / v3 0%")
    assert await rig.weights() == {"v1": 100, "v3": 0}
    assert [b["phase"] for b in hooks.bodies("abort")] == [
        "Progressing", "Progressing", "WaitingPromotion", "WaitingPromotion"]


async def test_event_hook_receives_every_event(
        rigs: Any, hooks: HookServer) -> None:
    rig = await rigs(with_hooks(hooks, ("slack", "event")))
    for t in (0, 10, 20, 20.5):
        status = await at(rig, t)
    assert status["phase"] == "Succeeded"
    bodies = hooks.bodies("slack")
    assert [b["eventMessage"] for b in bodies] == [e["message"] for e in status["events"]]
    assert [b["phase"] for b in bodies] == ["Progressing", "Progressing", "Promoting",
                                            "Succeeded"]
    assert {b["eventType"] for b in bodies} == {"Normal"}
    assert bodies[0] == {"name": "reviews-v3", "namespace": "default", "phase": "Progressing",
                         "checksum": status["specHash"], "type": "event",
                         "metadata": {"team": "reviews"},
                         "eventMessage": "start: v1 50% / v3 50%", "eventType": "Normal"}


async def test_an_event_hook_gets_the_events_in_order_however_long_each_call_takes(
        rigs: Any, hooks: HookServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two events fired a moment apart (promote, then promoted at the next sweep): the second
    is POSTed once the first has answered, so a first call slow to connect cannot make them
    arrive swapped (fired side by side, they did: the receiver got `v3 promoted` first)."""
    rig = await rigs(with_hooks(hooks, ("slack", "event")))
    for t in (0, 10):
        await at(rig, t)
    call = rig.controller.caller.call

    async def slow_promote(hook: Webhook, body: Any) -> HookResult:
        if str(body.get("eventMessage", "")).startswith("promote:"):
            await asyncio.sleep(0.2)  # its connection slow to be made (the race, made sure)
        return await call(hook, body)

    monkeypatch.setattr(rig.controller.caller, "call", slow_promote)
    for t in (20, 20.5):  # the sweeps fire their events, waiting for none
        rig.clock.now = T0 + t
        await rig.controller.sweep()
    await rig.controller.caller.drain()
    status = await rig.status()
    assert status["phase"] == "Succeeded"
    assert [b["eventMessage"] for b in hooks.bodies("slack")] == [
        e["message"] for e in status["events"]]


async def test_event_and_post_rollout_answers_are_kept_in_the_status(
        rigs: Any, hooks: HookServer) -> None:
    """Fired hooks gate nothing, but a user must see that one failed: each hook's last answer
    is in status.webhooks (one entry per hook however many calls), and recording it is no
    event (which would call the event hook again)."""
    hooks.answers["done"] = 500
    rig = await rigs(with_hooks(hooks, ("slack", "event"), ("done", "post-rollout")))
    status = await at(rig, 0)
    assert status["webhooks"] == [{"name": "slack", "type": "event", "ok": True,
                                   "result": "HTTP 200", "time": "2027-01-15T08:00:00.000Z"}]
    hooks.answers["slack"] = 503
    for t in (10, 20, 20.5):
        status = await at(rig, t)
    assert status["phase"] == "Succeeded"
    assert sorted(status["webhooks"], key=lambda w: w["name"]) == [
        {"name": "done", "type": "post-rollout", "ok": False, "result": "HTTP 500",
         "time": "2027-01-15T08:00:20.500Z"},
        {"name": "slack", "type": "event", "ok": False, "result": "HTTP 503",
         "time": "2027-01-15T08:00:20.500Z"}]
    assert len(hooks.bodies("slack")) == len(status["events"]) == 4
    assert (await at(rig, 60)) == status  # nothing more to record, nothing called again
    assert len(hooks.bodies("slack")) == 4 and len(hooks.bodies("done")) == 1


async def test_a_fired_answer_of_an_earlier_run_is_not_kept(rigs: Any) -> None:
    """An answer that comes in after the Canary was edited (a new run) is of no use to it."""
    rig = await rigs(CANARY)
    status = await at(rig, 0)
    hook = Webhook("done", "post-rollout", "http://127.0.0.1:9/")
    rig.controller._answered(KEY, "an-earlier-run", HookResult(hook, False, "HTTP 500"))
    rig.controller._answered(KEY, status["specHash"], HookResult(hook, True, "HTTP 200"))
    await rig.controller.record_fired()
    assert [(w["ok"], w["result"]) for w in (await rig.status())["webhooks"]] == [
        (True, "HTTP 200")]


def test_a_long_result_is_cut_short_in_the_status() -> None:
    hook = Webhook("x", "event", "http://127.0.0.1:9/")
    entry = HookResult(hook, False, "failed: " + "e" * 5000).as_status("t")
    assert len(entry["result"]) == 200 and entry["result"].endswith("eee...")


async def test_a_hook_that_hangs_or_refuses_counts_as_not_2xx(
        rigs: Any, hooks: HookServer) -> None:
    hooks.answers["slow"] = HANG
    canary = with_hooks(hooks, ("slow", "pre-rollout"), failures=1)
    canary["spec"]["webhooks"][0]["timeout"] = "200ms"
    rig = await rigs(canary)
    status = await at(rig, 0)
    assert status["phase"] == "RolledBack"
    assert status["message"] == ("roll back: pre-rollout hook 'slow': timed out after 0.2s, "
                                 "1 failure in a row: v1 100% / v3 0%")
    closed, caller = HookServer(), Caller()  # nobody listens on closed's port
    try:
        result = await caller.call(parse_document(with_hooks(closed, ("x", "rollout"))).spec
                                   .webhooks[0], {})
    finally:
        await caller.close()
    assert not result.ok and result.result.startswith("cannot connect: "), result


async def test_a_hanging_hook_holds_up_no_other_canary(
        rigs: Any, hooks: HookServer) -> None:
    """The sweep asks in the background: it returns with the call still in flight, and the
    other Canary (on another Route) starts meanwhile."""
    hooks.answers["slow"] = HANG
    rig = await rigs(with_hooks(hooks, ("slow", "confirm-rollout")))
    other = {**CANARY, "metadata": {"name": "ratings"},
             "spec": {**CANARY["spec"], "service": "ratings"}}
    for doc in (_ratings_policy(), _ratings_route(), other):
        await rig.store.create(parse_document(doc))
    rig.clock.now = T0
    await rig.controller.sweep()
    try:
        assert rig.controller.gates.in_flight()
        status = await rig.store.status(("Canary", "default", "ratings"))
        assert status["phase"] == "Progressing"
        assert (await rig.status()).get("phase") is None  # reviews-v3: still being asked
        await _wait_until(lambda: hooks.in_flight == 1)
    finally:
        rig.controller.gates.keep(set())


async def test_a_canary_whose_hooks_hang_delays_no_other_canarys_schedule(
        rigs: Any, hooks: HookServer) -> None:
    """reviews-v3's rollout and event hooks hang (for an hour); ratings, on its own Route,
    starts, advances and is promoted at its interval on the injected clock, each sweep
    returning at once, while reviews-v3 waits on its hook."""
    hooks.answers.update({"slow": HANG, "news": HANG})
    canary = with_hooks(hooks, ("slow", "rollout"), ("news", "event"))
    for hook in canary["spec"]["webhooks"]:
        hook["timeout"] = "1h"
    rig = await rigs(canary)
    other = {**CANARY, "metadata": {"name": "ratings"},
             "spec": {**CANARY["spec"], "service": "ratings"}}
    for doc in (_ratings_policy(), _ratings_route(), other):
        await rig.store.create(parse_document(doc))
    ratings = ("Canary", "default", "ratings")
    rig.controller.stats = lambda window: [  # ratings v3 as healthy as reviews v3
        *(rows := rig.stats(window)), *({**r, "service": "ratings"} for r in rows)]
    expected = {0: ("Progressing", "start: v1 50% / v3 50%"),
                10: ("Progressing", "advance to 100: v1 0% / v3 100%"),
                20: ("Promoting", "promote: v1 0% / v3 100%"),
                20.5: ("Succeeded", "v3 promoted: v1 0% / v3 100%")}
    for t, (phase, message) in expected.items():
        rig.clock.now = T0 + t
        async with asyncio.timeout(10):  # a sweep held up by the hook would fail here
            await rig.controller.sweep()
        status = await rig.store.status(ratings)
        assert (status["phase"], status["message"]) == (phase, message), t
    status = await rig.status()  # reviews-v3: its analysis at 10 still waits on "slow"
    assert (status["phase"], status["canaryWeight"]) == ("Progressing", 50)
    assert rig.controller.gates.in_flight()
    await _wait_until(lambda: hooks.in_flight == 2)  # "slow", and the one event (its start)
    rig.controller.gates.keep(set())


async def test_many_hanging_calls_leave_a_connection_for_the_others(
        hooks: HookServer) -> None:
    """Every call of the control plane shares one HTTP client: a pool limit (aiohttp's
    default is 100 connections) would let a Canary whose event hook hangs, called at each
    event, make every other Canary's hooks queue for a connection and time out (failed
    checks, rollbacks)."""
    hooks.answers["stuck"] = HANG
    spec = parse_document(with_hooks(hooks, ("stuck", "event"), ("load", "rollout"))).spec
    stuck, load = spec.webhooks
    caller = Caller()
    try:
        for _ in range(120):
            caller.fire(stuck, {})
        await _wait_until(lambda: hooks.in_flight >= 100)
        result = await caller.call(load, {})  # its 2s timeout counts a wait for a connection
        assert result.ok, result
    finally:
        await caller.close()


async def _wait_until(check: Any) -> None:
    """Until the receiver saw the call (the request may still be on its way)."""
    async with asyncio.timeout(10):
        while not check():
            await asyncio.sleep(0.01)


def _ratings_policy() -> dict[str, Any]:
    return {"apiVersion": "ami.mesh/v1alpha1", "kind": "DestinationPolicy",
            "metadata": {"name": "ratings"},
            "spec": {"host": "ratings", "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                                                    {"name": "v3", "labels": {"version": "v3"}}]}}


def _ratings_route() -> dict[str, Any]:
    return {"apiVersion": "ami.mesh/v1alpha1", "kind": "Route", "metadata": {"name": "ratings"},
            "spec": {"host": "ratings", "rules": [{"backends": [{"subset": "v1",
                                                                 "weight": 100}]}]}}


async def test_the_run_loop_wakes_on_a_webhook_answer_and_loses_no_store_change() -> None:
    """_changed races the store's watch with the webhook-answered event: either wakes it, and
    a wait that ended (timeout, answer) leaves no read behind to swallow the next change."""
    store = MemStore()
    watch, answered = store.watch(), asyncio.Event()
    try:
        async with asyncio.timeout(10):  # a lost wake-up would hang: fail instead
            assert await _changed(watch, 0.01, answered)  # timed out
            answered.set()
            assert await _changed(watch, None, answered)  # the answer
            assert not answered.is_set()
            await store.create(parse_document(CANARY))
            assert await _changed(watch, None, answered)  # the store change, not lost
    finally:
        watch.close()


@pytest.mark.parametrize("hook, problem", [
    ({"name": "a", "type": "rollout", "url": "ftp://x/"},
     "spec.webhooks[0].url: invalid value 'ftp://x/', expected an http:// or https:// URL"),
    ({"name": "a", "type": "pre-deploy", "url": "http://x/"},
     "spec.webhooks[0].type: unknown value 'pre-deploy'"),
    ({"name": "a", "type": "rollout", "url": "http://x/", "metadata": {"n": 1}},
     "spec.webhooks[0].metadata.n: expected a string, got an integer"),
    ({"name": "a", "type": "rollout", "url": "http://x/", "timeout": "0s"},
     "spec.webhooks[0].timeout: must be a positive duration"),
    ({"type": "rollout", "url": "http://x/"}, "spec.webhooks[0].name: field is required"),
])
def test_webhooks_are_checked(hook: dict[str, Any], problem: str) -> None:
    doc = {**CANARY, "spec": {**CANARY["spec"], "webhooks": [hook]}}
    with pytest.raises(ValidationError) as err:
        parse_document(doc)
    assert problem in str(err.value)


def test_webhook_names_are_unique() -> None:
    hook = {"name": "a", "type": "rollout", "url": "https://x.example/hook"}
    doc = {**CANARY, "spec": {**CANARY["spec"], "webhooks": [hook, hook]}}
    with pytest.raises(ValidationError) as err:
        parse_document(doc)
    assert "spec.webhooks[1].name: duplicate webhook name 'a'" in str(err.value)

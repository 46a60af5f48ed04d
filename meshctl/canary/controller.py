"""The control plane's Canary controller: runs each Canary's analysis, writes the Route's
weights through the store and reports on the Canary's status."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from meshctl.api.canary import (
    CONFIRM_PROMOTION,
    CONFIRM_ROLLOUT,
    CONFIRM_TRAFFIC_INCREASE,
    DONE,
    EVENT,
    FAILED,
    HOLDING,
    INITIALIZING,
    POST_ROLLOUT,
    PRE_ROLLOUT,
    PROGRESSING,
    PROMOTING,
    ROLLBACK,
    ROLLED_BACK,
    ROLLOUT,
    SUCCEEDED,
    WAITING,
    WAITING_PROMOTION,
    CanarySpec,
)
from meshctl.api.resources import Resource, parse_document
from meshctl.canary.analysis import Measurement
from meshctl.canary.decide import Action, Progress, Step, decide, fail
from meshctl.canary.measure import analysis_window, measurement, service_labels, version_label
from meshctl.canary.meshtarget import current_split
from meshctl.canary.statefile import CanaryStateFile
from meshctl.canary.targets import find_route, problems, subsets
from meshctl.canary.webhooks import Caller, Gates, HookResult, payload
from meshctl.commands.shift import ShiftRefused, Weights, plan_shift
from meshctl.controlplane.errors import Conflict, Invalid, NotFound
from meshctl.controlplane.store import EventType, Key, Store, StoredObject, Watch

log = logging.getLogger("ami.canary")

PHASE_OF = {Action.ADVANCE: PROGRESSING, Action.FAIL: PROGRESSING, Action.HOLD: HOLDING,
            Action.PROMOTE: PROMOTING, Action.ROLL_BACK: ROLLED_BACK}
EVENTS_KEPT = 10
NOT_STARTED = frozenset({INITIALIZING, WAITING})
GATE_OF = {Action.ADVANCE: CONFIRM_TRAFFIC_INCREASE, Action.PROMOTE: CONFIRM_PROMOTION}
MIN_WINDOW, MAX_WINDOW = 1.0, 600.0  # what /api/v1/stat's window is clamped to

Stats = Callable[[float], Iterable[Mapping[str, Any]]]
"""The ``/api/v1/stat`` rows (``service``, ``version``, ``rps``, ...) over a window."""
Check = Callable[[list[Resource]], Awaitable[None]]
"""Raises when writing these resources would break the store's cross-document rules."""
Lagging = Callable[[int], list[str]]
"""The proxies that have not ACKed a snapshot of this store version yet."""


def timestamp(t: float) -> str:
    """RFC 3339 in UTC with milliseconds (an interval may be shorter than a second)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def parse_timestamp(text: object) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except ValueError:
        return None


def spec_hash(resource: Resource) -> str:
    """The Canary's declared spec, hashed: a change starts a new run."""
    text = json.dumps(resource.raw.get("spec"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class CanaryController:
    """Runs every stored Canary; ``sweep()`` is one pass (tests call it with a fake clock).

    The decisions are the CLI's (meshctl.canary.decide), on the rows the control plane serves
    on ``/api/v1/stat``. Everything a run needs to go on is in its status (weight, failures
    and holds in a row, when it last analysed) and in the Route, so a restarted control plane
    resumes where it stopped. A Route the user re-weighted by hand stops the run (phase
    Failed): it does not fight the user; editing the Canary starts a new run.
    """

    def __init__(self, store: Store, stats: Stats, *, scrape_interval: float = 2.0,
                 clock: Callable[[], float] = time.time, lock: asyncio.Lock | None = None,
                 check: Check | None = None, state: CanaryStateFile | None = None,
                 lagging: Lagging | None = None) -> None:
        self.store = store
        self.stats = stats
        self.scrape_interval = scrape_interval
        self.clock = clock
        self.lock = lock or asyncio.Lock()  # the API's apply lock: one writer at a time
        self.check = check
        self.state = state
        self.lagging = lagging
        self.watching_since: float | None = None  # set by restore(): when metrics began
        self.caller = Caller()
        self._hook_answered = asyncio.Event()  # a webhook call ended: sweep again
        self.gates = Gates(self.caller, self._hook_answered.set)
        # event and post-rollout answers to put in status.webhooks at the next sweep (its
        # writes are the only status writes: no answer is lost to a status read before it)
        self._fired_answers: dict[Key, list[tuple[str, HookResult, float]]] = {}

    async def run(self, tick: float = 1.0) -> None:
        """Restore saved statuses, then sweep whenever a Canary (or a Route or
        DestinationPolicy one may target) changes in the store, when the next analysis is
        due, and every ``tick`` seconds only while a run waits on something the store does
        not announce (proxies' ACKs of a promotion, a retry); with no Canary it sleeps."""
        await self.restore()
        watch = self.store.watch()
        try:
            while True:
                wake = await self.sweep()
                now = self.clock()
                # a retry or a wait on ACKs polls every tick; a due analysis waits till due
                timeout = None if wake is None else wake - now + 0.01 if wake > now else tick
                if not await _changed(watch, timeout, self._hook_answered):
                    watch.close()  # fell behind: a fresh watch (the next sweep relists)
                    watch = self.store.watch()
        finally:
            watch.close()
            self.gates.keep(set())
            await self.caller.close()

    async def restore(self) -> None:
        """Put the statuses saved before a restart back on the Canaries that still exist."""
        self.watching_since = self.clock()
        if self.state is None:
            return
        for key, status in self.state.load().items():
            obj = await self.store.get(*key)
            if obj is not None:
                await self._put_status(obj.key, status)

    async def sweep(self) -> float | None:
        """One pass over every Canary; when (by ``clock``) the next pass is needed without a
        store change: None when no run is going on, now when one must be retried soon."""
        await self.record_fired()
        canaries = await self.store.list("Canary")
        wakes: list[float] = []
        for obj in canaries:
            try:
                await self.reconcile(obj)
                wake = await self._next_wake(obj)
                if wake is not None:
                    wakes.append(wake)
            except asyncio.CancelledError:
                raise
            except NotFound:  # deleted (the Canary, or its Route) while we looked
                continue
            except Conflict:  # the Route changed since it was read: judged next sweep
                wakes.append(self.clock())
                log.info("canary %s/%s: the Route changed while being written; next sweep",
                         obj.resource.namespace, obj.resource.name)
            except (Invalid, ShiftRefused) as exc:  # a write that can never be made
                status = {**await self.store.status(obj.key),
                          "specHash": spec_hash(obj.resource)}  # this run's end
                await self._report(obj, status, FAILED, self.clock(),
                                   f"stopped: cannot write the Route: {exc}")
            except Exception:  # one canary's trouble must not stop the others
                wakes.append(self.clock())
                log.exception("canary %s/%s: reconcile failed; retrying",
                              obj.resource.namespace, obj.resource.name)
        self.gates.keep({o.key for o in canaries})
        if self.state is not None:  # a deleted Canary is forgotten; its weights stay
            self.state.keep({o.key for o in canaries})
        return min(wakes, default=None)

    async def record_fired(self) -> None:
        """Put the answers of the event and post-rollout hooks fired since the last sweep in
        their Canaries' status.webhooks (of the run that fired them only)."""
        fired, self._fired_answers = self._fired_answers, {}
        for key, answers in fired.items():
            try:
                status = await self.store.status(key)
            except NotFound:
                continue
            entries = [r.as_status(timestamp(t)) for digest, r, t in answers
                       if digest == status.get("specHash")]
            if entries:
                await self._put_status(key, {**status,
                                             "webhooks": _merge(status, entries)})

    def _answered(self, key: Key, digest: str, result: HookResult) -> None:
        self._fired_answers.setdefault(key, []).append((digest, result, self.clock()))
        self._hook_answered.set()

    async def _next_wake(self, obj: StoredObject) -> float | None:
        """When this Canary needs a sweep if nothing changes in the store: its next analysis,
        now (polled) while it waits for proxies to ACK a promotion, never once it is done or
        waiting for its Route or subsets (their creation is a store change)."""
        status = await self.store.status(obj.key)
        phase = str(status.get("phase"))
        if phase in DONE or phase == INITIALIZING:
            return None
        if phase == PROMOTING:
            return self.clock()
        spec = obj.resource.spec
        assert isinstance(spec, CanarySpec)
        interval = spec.plan().interval
        last = parse_timestamp(status.get("lastStepTime")) or self.clock()
        if phase == WAITING:  # a gate asked again each interval; no metrics needed yet
            return last + interval
        return max(last + interval, self._metrics_from(interval))

    async def reconcile(self, obj: StoredObject) -> None:
        """One Canary: start it, check its Route, analyse it when due, report."""
        spec = obj.resource.spec
        assert isinstance(spec, CanarySpec)
        ns = obj.resource.namespace
        now = self.clock()
        status = await self.store.status(obj.key)
        digest = spec_hash(obj.resource)
        if status.get("specHash") != digest:  # new, or edited: a new run
            status = {"specHash": digest, "phase": INITIALIZING,
                      **({"conditions": status["conditions"]} if "conditions" in status else {})}
        phase = str(status.get("phase"))
        if phase in DONE:
            return
        routes = [o.to_dict() for o in await self.store.list("Route", ns)]
        policies = [o.to_dict() for o in await self.store.list("DestinationPolicy", ns)]
        issues = problems(spec, ns, routes, policies)
        if issues:
            # Flagger waits for a target that is not there yet; a run that loses it stops
            waiting = phase in NOT_STARTED
            await self._report(obj, status, INITIALIZING if waiting else FAILED, now,
                               ("waiting: " if waiting else "stopped: ") + "; ".join(issues))
            return
        route = find_route(spec, ns, routes)
        assert route is not None  # problems() said so
        split = dict(current_split(route, spec.rule))
        plan = spec.plan()
        if phase in NOT_STARTED:
            await self._start(obj, status, spec, route, policies, split, now)
            return
        weight = int(status.get("canaryWeight", 0))
        if (split.get(spec.stable, 0), split.get(spec.canary, 0)) != (100 - weight, weight):
            now_text = " / ".join(f"{k} {v}%" for k, v in split.items())
            await self._report(obj, status, FAILED, now,
                               f"stopped: the Route's weights were changed by hand ({now_text};"
                               f" the canary had set {_split(spec, weight)}); they are left "
                               "as they are: edit or re-create the Canary to start again")
            return
        if phase == PROMOTING:  # the promotion is in the Route: done once every proxy has it
            lagging = self.lagging(int(status.get("promotedVersion", 0))) if self.lagging \
                else []
            if lagging:
                await self._report(obj, status, PROMOTING, now,
                                   f"promote: {_split(spec, 100)}; waiting for "
                                   f"{len(lagging)} prox{'y' if len(lagging) == 1 else 'ies'}"
                                   f" to ACK ({', '.join(sorted(lagging)[:5])})")
            else:
                await self._report(obj, status, SUCCEEDED, now,
                                   f"{spec.canary} promoted: {_split(spec, 100)}")
            return
        last = parse_timestamp(status.get("lastStepTime")) or now
        if now < last + plan.interval or now < self._metrics_from(plan.interval):
            return
        await self._analyse(obj, status, spec, policies, route, weight, now)

    async def _start(self, obj: StoredObject, status: dict[str, Any], spec: CanarySpec,
                     route: dict[str, Any], policies: list[dict[str, Any]],
                     split: Mapping[str, int], now: float) -> None:
        """Start the run once its confirm-rollout hooks say yes and its pre-rollout hooks
        pass; asked again every interval (phase Waiting) until then."""
        plan = spec.plan()
        last = parse_timestamp(status.get("lastStepTime"))
        if status.get("phase") == WAITING and last is not None and now < last + plan.interval:
            return
        # Flagger asks the rollback hooks while Waiting too: a way to abort a run held at
        # its gate (not at the first attempt, Initializing: nothing to abort yet)
        rollback = self._gate(obj, status, ROLLBACK) if status.get("phase") == WAITING else []
        confirm = self._gate(obj, status, CONFIRM_ROLLOUT)
        asked = [r.said() for r in rollback or () if r.ok]  # a 2xx: a rollback is asked
        if asked:  # at once, a gate still being asked or not
            assert rollback is not None
            self.gates.forget(obj.key)  # a confirm-rollout call still in flight: not needed
            await self._set_weight(route, spec, policies, 0)
            await self._report(obj, status, ROLLED_BACK, now,
                               f"roll back: asked by {asked[0]}: {_split(spec, 0)}",
                               canaryWeight=0, lastStepTime=timestamp(now),
                               webhooks=_results(status, rollback + (confirm or []), now))
            return
        if rollback is None or confirm is None:
            return  # asked; the answers wake the next sweep
        refused = [r for r in confirm if not r.ok]
        if refused:
            said = refused[0].said()
            await self._report(obj, status, WAITING, now, f"waiting for approval: {said}",
                               lastStepTime=timestamp(now), waitingOn=said,
                               webhooks=_results(status, rollback + confirm, now))
            return
        pre = self._gate(obj, status, PRE_ROLLOUT)
        if pre is None:
            return
        failed = [r for r in pre if not r.ok]
        gated = rollback + confirm + pre
        results = _results(status, gated, now) if gated else None
        if failed:  # a failed check before any traffic: counted like the metrics' ones
            step = fail(plan, Progress(0, int(status.get("failedChecks", 0))), failed[0].said())
            if step.action is Action.ROLL_BACK:
                await self._set_weight(route, spec, policies, 0)
                phase, message = ROLLED_BACK, f"roll back: {step.said}: {_split(spec, 0)}"
            else:
                phase, message = WAITING, (f"failure {step.progress.failed} of "
                                           f"{plan.failures}: {step.reason}; not started")
            await self._report(obj, status, phase, now, message, canaryWeight=0,
                               failedChecks=step.progress.failed, heldChecks=0,
                               lastStepTime=timestamp(now), webhooks=results)
            return
        weight = plan.start_weight(split.get(spec.canary, 0))
        await self._set_weight(route, spec, policies, weight)
        await self._report(obj, status, PROGRESSING, now, f"start: {_split(spec, weight)}",
                           canaryWeight=weight, failedChecks=0, heldChecks=0,
                           lastStepTime=timestamp(now),
                           **({"webhooks": results} if results else {}))

    def _gate(self, obj: StoredObject, status: Mapping[str, Any],
              kind: str) -> list[HookResult] | None:
        """The answers of the Canary's ``kind`` hooks at this moment of the run (the
        status' lastStepTime): [] with none, None while they are being asked."""
        spec = obj.resource.spec
        assert isinstance(spec, CanarySpec)
        hooks = spec.hooks(kind)
        if not hooks:  # nothing to ask: no task, no payload (most Canaries)
            return []
        phase, digest = str(status.get("phase")), str(status.get("specHash"))
        calls = [(h, payload(h, obj.resource.name, obj.resource.namespace, phase, digest))
                 for h in hooks]
        return self.gates.results(obj.key, f"{digest}/{status.get('lastStepTime', '')}",
                                  kind, calls)

    def _fire(self, obj: StoredObject, kind: str, status: Mapping[str, Any],
              event: tuple[str, str] | None = None) -> None:
        """Call the Canary's ``kind`` hooks without waiting (event, post-rollout); each hook
        gets its calls in the order fired (a run's events in order)."""
        spec = obj.resource.spec
        assert isinstance(spec, CanarySpec)
        key, digest = obj.key, str(status.get("specHash"))
        for hook in spec.hooks(kind):
            self.caller.fire(hook, payload(hook, obj.resource.name, obj.resource.namespace,
                                           str(status.get("phase")), digest, event),
                             functools.partial(self._answered, key, digest),
                             queue=(key, hook.name))

    def _metrics_from(self, interval: float) -> float:
        """When a whole analysis window has been scraped since this control plane started:
        a window reaching back before it holds no metrics, and would only count a hold."""
        if self.watching_since is None:
            return 0.0
        return self.watching_since + analysis_window(interval, self.scrape_interval)

    async def _analyse(self, obj: StoredObject, status: dict[str, Any], spec: CanarySpec,
                       policies: list[dict[str, Any]], route: dict[str, Any], weight: int,
                       now: float) -> None:
        plan = spec.plan()
        ns = obj.resource.namespace
        window = min(max(analysis_window(plan.interval, self.scrape_interval), MIN_WINDOW),
                     MAX_WINDOW)
        rollback = self._gate(obj, status, ROLLBACK)
        rollout = self._gate(obj, status, ROLLOUT)
        if rollback is None or rollout is None:
            return  # asked; the answers wake the next sweep
        version = version_label(subsets(spec, ns, policies), spec.canary)
        m = measurement(self.stats(window), window, service_labels(spec.service, ns), version)
        progress = Progress(weight, int(status.get("failedChecks", 0)),
                            int(status.get("heldChecks", 0)))
        asked = [r.said() for r in rollback if r.ok]  # a 2xx: someone asked for a rollback
        failed = [r.said() for r in rollout if not r.ok]
        if asked:
            step = Step(Action.ROLL_BACK, Progress(0, progress.failed, progress.held),
                        asked[0], f"asked by {asked[0]}")
        elif failed:
            step = fail(plan, progress, failed[0])
        else:
            step = decide(plan, progress, m)
        results = rollback + rollout
        phase, reason, waiting_on = PHASE_OF[step.action], step.reason, None
        if step.action in GATE_OF:
            confirm = self._gate(obj, status, GATE_OF[step.action])
            if confirm is None:
                return
            results += confirm
            refused = [r.said() for r in confirm if not r.ok]
            if refused:  # no step, no failure: the analysis passed
                waiting_on, reason = refused[0], ""
                phase = WAITING_PROMOTION if step.action is Action.PROMOTE else HOLDING
                step = Step(Action.HOLD, Progress(weight), waiting_on)
        new = step.progress.weight
        written: dict[str, Any] = {}
        if results:
            written["webhooks"] = _results(status, results, now)
        if waiting_on is not None:
            written["waitingOn"] = waiting_on
        if step.action in (Action.ADVANCE, Action.PROMOTE, Action.ROLL_BACK):
            revision = await self._set_weight(route, spec, policies, new)
            if step.action is Action.PROMOTE:
                written["promotedVersion"] = revision
        summary = step.summary(plan, weight)
        if phase == WAITING_PROMOTION:
            message = f"waiting for promotion: {waiting_on}"
        elif step.action in (Action.HOLD, Action.FAIL):
            message = summary
        else:
            message = f"{summary}: {_split(spec, new)}"
        await self._report(obj, status, phase, now, message,
                           canaryWeight=new, failedChecks=step.progress.failed,
                           heldChecks=step.progress.held, lastStepTime=timestamp(now),
                           lastAnalysis=_analysis(m, weight, now, reason), **written)

    async def _set_weight(self, route: dict[str, Any], spec: CanarySpec,
                          policies: list[dict[str, Any]], weight: int) -> int:
        """Re-weight the rule as ``meshctl shift stable=100-w,canary=w`` (a conditional
        update of the Route read: a concurrent write makes it fail, to be judged next sweep);
        the Route's store version with that weight."""
        ns = str(route["metadata"]["namespace"])
        names = [str(s.get("name")) for s in subsets(spec, ns, policies)]
        weights = Weights(named=((spec.stable, 100 - weight), (spec.canary, weight)))
        plan = plan_shift(route, names, weights, spec.rule)
        if not plan.changed:
            return int(route["metadata"]["resourceVersion"])
        doc = {k: v for k, v in plan.route.items() if k != "status"}
        resource = parse_document(doc)
        async with self.lock:
            if self.check is not None:
                await self.check([resource])
            stored = await self.store.update(resource, route["metadata"]["resourceVersion"])
        return stored.resource_version

    async def _report(self, obj: StoredObject, status: dict[str, Any], phase: str, now: float,
                      message: str, **fields: Any) -> None:
        """Set the status: phase, message, ``fields``; an event (and a log line) when the
        message is new."""
        if status.get("phase") == phase and status.get("message") == message and not fields:
            return
        new = {**status, **{k: v for k, v in fields.items() if v is not None},
               "phase": phase, "message": message}
        if "waitingOn" not in fields:  # only while a confirm-* hook says no
            new.pop("waitingOn", None)
        if status.get("phase") != phase or "lastTransitionTime" not in status:
            new["lastTransitionTime"] = timestamp(now)
        fired: list[tuple[str, tuple[str, str] | None]] = []
        if status.get("message") != message or fields:
            event = {"time": timestamp(now), "weight": new.get("canaryWeight", 0),
                     "phase": phase, "message": message}
            new["events"] = [*status.get("events", []), event][-EVENTS_KEPT:]
            log.info("canary %s/%s: %s: %s", obj.resource.namespace, obj.resource.name, phase,
                     message)
            fired.append((EVENT, (message, "Warning" if phase in (FAILED, ROLLED_BACK)
                                  or message.startswith("failure") else "Normal")))
        if phase in (SUCCEEDED, ROLLED_BACK) and status.get("phase") != phase:
            fired.append((POST_ROLLOUT, None))
        status.clear()
        status.update(new)
        await self._put_status(obj.key, new)
        for kind, said in fired:  # once the status is written: hooks may read it back
            self._fire(obj, kind, new, said)

    async def _put_status(self, key: Key, status: Mapping[str, Any]) -> None:
        current = await self.store.status(key)
        merged = dict(status)
        if "conditions" in current:  # the store's own (Accepted) conditions stay
            merged["conditions"] = current["conditions"]
        await self.store.set_status(key, merged)
        if self.state is not None:
            with contextlib.suppress(OSError):  # logged by the state file
                self.state.save(key, merged)


WATCHED = frozenset({"Canary", "Route", "DestinationPolicy"})  # what a run's sweep reads


async def _changed(watch: Watch, timeout: float | None, answered: asyncio.Event) -> bool:
    """Wait up to ``timeout`` (None: forever) for a change of a kind a sweep reads or for
    ``answered`` (a webhook's answer); True on one or on timeout, False when the watch ended
    (fell behind)."""
    waiter = asyncio.ensure_future(answered.wait())
    nxt: asyncio.Future[Any] | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                nxt = asyncio.ensure_future(anext(watch, None))
                done, _ = await asyncio.wait({nxt, waiter},
                                             return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:
                    answered.clear()
                    return True
                event = nxt.result()
                if event is None or event.type is EventType.ERROR:
                    return False
                if event.object is not None and event.object.resource.kind in WATCHED:
                    return True
    except TimeoutError:
        return True
    finally:
        # a read left waiting would take the next event from the next call: cancelled (a
        # Watch's __anext__ is safe to cancel: its events wait in a queue)
        waiter.cancel()
        if nxt is not None:
            nxt.cancel()


def _split(spec: CanarySpec, weight: int) -> str:
    return f"{spec.stable} {100 - weight}% / {spec.canary} {weight}%"


def _results(status: Mapping[str, Any], results: list[HookResult],
             now: float) -> list[dict[str, Any]]:
    """status.webhooks: each hook's last answer (name, type, ok, result, time)."""
    return _merge(status, [r.as_status(timestamp(now)) for r in results])


def _merge(status: Mapping[str, Any], entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """status.webhooks with these newer entries: one per hook name (the last), so it is no
    longer than the Canary's list of webhooks."""
    latest = {e["name"]: e for e in entries}
    kept = [e for e in status.get("webhooks", []) if e.get("name") not in latest]
    return kept + list(latest.values())


def _analysis(m: Measurement, weight: int, now: float, reason: str) -> dict[str, Any]:
    """The figures of one analysis, as status.lastAnalysis shows them."""
    return {"time": timestamp(now), "weight": weight, "requests": round(m.requests),
            "successRate": m.success_rate, "p99Ms": m.p99_ms,
            "failedChecks": [reason] if reason else []}

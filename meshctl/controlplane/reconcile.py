"""The reconcile loop: resources + registry -> one snapshot per proxy, pushed when it changed.

Level-based, on keys (proxy names). A store event or a registry change marks the proxies it
reaches, which the pass works out by comparing the resources and the registry with what the
previous pass read (meshctl.controlplane.reach: by namespace, host and Sidecar scope;
mesh-wide kinds and facts reach everyone); a re-watch of the store marks everyone. A pass
re-reads the store, builds each marked proxy's snapshot (once per distinct SnapshotInputs:
replicas share it) and sends it only if its version differs from what the proxy last ACKed
or was sent. Bursts are debounced: a pass starts once marks have been quiet for ``quiet``
seconds, and at most ``cap`` seconds after the first mark.

Store revision. A snapshot records the store revision it was computed from (the highest
``resourceVersion`` seen), so ``wait_synced(N)`` can tell when every connected proxy runs a
config that includes a write that returned version N. A proxy the pass's changes do not reach
runs a config that includes them as it is: its revision advances without a rebuild.

Deltas. To a proxy that said it takes them, a push after the first on its stream goes as a
delta from the snapshot it last ACKed there (meshctl.controlplane.deltas); a NACK of a delta
is answered with the same snapshot in full at once. Full snapshots in flight are bounded
(meshctl.controlplane.fullpushes): past the bound a proxy's waits in line, released as
answers come in.

Reconnects. A proxy that (re)connects announcing the config it runs counts as having ACKed it:
if its snapshot is unchanged nothing is pushed. After a control-plane restart the registry is
restored from its state file (registrystate), so the snapshots are unchanged and a restart
pushes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from meshctl.api import mesh_pb2
from meshctl.api.kinds import MeshConfigSpec
from meshctl.controlplane.deltas import Deltas
from meshctl.controlplane.fullpushes import FullPushes
from meshctl.controlplane.reach import (
    Objects,
    RegistryFacts,
    ScopeIndex,
    changed_resources,
    resources_reach,
)
from meshctl.controlplane.registry import Registry
from meshctl.controlplane.snapshots import BuiltSnapshot, SnapshotBuilder, jwks_uris
from meshctl.controlplane.store import EventType, Store
from meshctl.controlplane.timeline import PassTimes, Timeline

log = logging.getLogger(__name__)
_ANSWER_TIMEOUT = 10.0  # seconds after which an unanswered push no longer holds back the next
_YIELD_EVERY = 100  # proxies built and queued between two returns to the event loop
_WRITES_KEPT = 1024  # store revisions whose write time is remembered (for converged_ms)
FULLS_IN_FLIGHT = 100  # full snapshots unanswered at once (meshctl.controlplane.fullpushes)

Sender = Callable[[mesh_pb2.ConfigMessage], None]


@dataclass(slots=True)
class PushState:
    """What one proxy has been sent and has accepted."""

    sender: Sender | None = None  # None once the stream is gone
    latest_version: str | None = None  # last computed
    sent_version: str | None = None
    sent_revision: int = 0
    nonce: str = ""
    acked_version: str | None = None
    acked_revision: int = 0
    attached_at: float = 0.0  # monotonic, when this stream registered
    last_ack: float | None = None  # wall clock
    sent_at: float | None = None  # monotonic, of the push awaiting its answer
    nack: str | None = None
    deferred: bool = False  # a newer snapshot waits for the answer to the one in flight
    deltas: bool = False  # the proxy said (Register.deltas) it applies delta pushes
    sent: BuiltSnapshot | None = None  # the snapshot of the last push
    sent_delta: bool = False  # ... which went as a delta
    base: BuiltSnapshot | None = None  # the last it ACKed on this stream: what deltas build on
    queued: BuiltSnapshot | None = None  # a full snapshot waiting for room (FullPushes)
    queued_revision: int = 0
    times: PassTimes | None = None  # of the pass whose snapshot it is owed (timeline)

    @property
    def synced(self) -> bool:
        return self.acked_version is not None and self.acked_version == self.latest_version


@dataclass(slots=True)
class ReconcileCounters:
    """Totals since start, for metrics (ami_controlplane_* counters)."""

    passes: int = 0
    computed: int = 0
    shared: int = 0  # proxies given the snapshot computed for another with the same inputs
    pushed: int = 0
    pushed_deltas: int = 0  # of ``pushed``, sent as deltas (meshctl.controlplane.deltas)
    delta_fallbacks: int = 0  # deltas a proxy NACKed, answered with the full snapshot
    pushed_bytes_full: int = 0  # ConfigMessage bytes, as ami_controlplane_pushed_bytes_total
    pushed_bytes_delta: int = 0
    unchanged: int = 0
    acks: int = 0
    nacks: int = 0
    errors: int = 0
    jwks_fetches: int = 0  # RequestAuthentication jwksUri fetches (meshctl.controlplane.jwks)
    jwks_fetch_failures: int = 0
    ack_seconds_sum: float = 0.0  # push -> ACK, summed over ACKed pushes
    ack_seconds_count: int = 0


class Reconciler:
    """Keeps every connected proxy's snapshot current; see the module docstring."""

    def __init__(self, store: Store, registry: Registry, *, quiet: float = 0.1, cap: float = 1.0,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 fulls_in_flight: int = FULLS_IN_FLIGHT) -> None:
        self.store = store
        self.registry = registry
        registry.on_change = self.inputs_changed
        self.quiet, self.cap = quiet, cap
        self._clock, self._wall, self._sleep = clock, wall, sleep
        self.states: dict[str, PushState] = {}
        self.counters = ReconcileCounters()
        self.revision = 0
        self.mesh = MeshConfigSpec()
        self.certificates: Any = None  # the CA service, set by serve(), read by /metrics
        self.jwks: Any = None  # JwksCache of jwksUri keys, set by serve()
        self._dirty: set[str] = set()
        self._all_dirty = False
        self._moved = False  # the next pass works out whom a store/registry change reaches
        self._facts: RegistryFacts | None = None  # what the last pass read from the registry
        self._objects: Objects | None = None  # ... and from the store
        self._in_pass: set[str] = set()  # marked proxies the running pass has not computed yet
        self._kick = asyncio.Event()
        self._last_mark = 0.0
        self._nonces = 0
        self._progress = asyncio.Event()
        self._sync_waits: set[_SyncWait] = set()  # the wait_synced calls waiting
        self.timeline = Timeline(_WRITES_KEPT)  # store writes and their passes' phases
        self._fulls = FullPushes(fulls_in_flight, clock, _ANSWER_TIMEOUT)
        self._release_timer: asyncio.TimerHandle | None = None

    # -- streams -------------------------------------------------------------------------------
    def attach(self, name: str, sender: Sender, running_version: str = "", *,
               deltas: bool = False) -> None:
        """A proxy's stream registered; ``running_version`` is the config it already runs,
        ``deltas`` whether it applies delta pushes (its first push on a stream is full).

        A Register naming the version it runs is that proxy's ACK of it, timed now: after a
        control-plane restart that pushes nothing it is the only one (lastAck was null for
        proxies shown SYNCED)."""
        state = PushState(sender=sender, deltas=deltas, attached_at=self._clock())
        if running_version:
            state.sent_version = state.acked_version = running_version
            state.last_ack = self._wall()
        self.states[name] = state
        self.mark(name)
        self._notify()  # a new laggard for whoever waits

    def detach(self, name: str, sender: Sender) -> None:
        state = self.states.get(name)
        if state is not None and state.sender is sender:
            state.sender = None
            self._fulls.done(name)
            self._release()
            self._notify(name)

    def written(self, name: str, nonce: str) -> None:
        """The stream of ``name`` wrote the push ``nonce`` (gRPC took it): for the timeline."""
        state = self.states.get(name)
        if state is not None and state.times is not None and nonce == state.nonce:
            state.times.last_written = self._clock()

    def ack(self, name: str, version: str, nonce: str) -> None:
        state = self.states.get(name)
        if state is None or nonce != state.nonce:
            return  # an answer to a superseded push
        self.counters.acks += 1
        now = self._clock()  # one reading: the ACK's phase time and convergence are one moment
        if state.sent_at is not None:
            self.counters.ack_seconds_sum += now - state.sent_at
            self.counters.ack_seconds_count += 1
            state.sent_at = None
        state.acked_version = version
        state.base = state.sent if state.sent is not None and state.sent.version == version \
            else None
        self._advance(state, state.sent_revision, now)
        state.last_ack, state.nack = self._wall(), None
        if state.times is not None and state.synced:
            state.times.last_acked = now
        self._answered(name, state)
        self._notify(name)

    def _answered(self, name: str, state: PushState) -> None:
        state.sent_at = None
        self._fulls.done(name)
        if state.deferred:
            state.deferred = False
            self.mark(name)  # send the snapshot that waited for this answer
        self._release()

    def _release(self) -> None:
        """Send the full snapshots waiting in line that there is now room for."""
        while (name := self._fulls.next_waiting()) is not None:
            state = self.states.get(name)
            if state is None or state.sender is None or state.queued is None:
                continue
            built, state.queued = state.queued, None
            if built.version != state.latest_version:
                continue  # superseded since: what the pass did instead stands
            if state.sent_at is not None and self._clock() - state.sent_at < _ANSWER_TIMEOUT:
                state.deferred = True  # one in flight: its answer marks it again
                continue
            self._push(name, state, built, state.queued_revision, None)

    def _release_later(self) -> None:
        """Release again once unanswered fulls stop taking room (an answer may never come)."""
        if self._fulls.waiting and self._release_timer is None:
            def release() -> None:
                self._release_timer = None
                self._release()
                self._release_later()
            self._release_timer = asyncio.get_running_loop().call_later(_ANSWER_TIMEOUT,
                                                                        release)

    def nack(self, name: str, version: str, nonce: str, error: str) -> None:
        state = self.states.get(name)
        if state is None or nonce != state.nonce:
            return
        if state.sent_delta and state.sent is not None and state.sender is not None:
            # The proxy could not build the snapshot from its base (or refused it: the full
            # one then gets the same answer, which counts): send it whole, still one in flight.
            self.counters.delta_fallbacks += 1
            log.info("proxy %s refused a delta to %s (%s): sending it in full", name,
                     version, error)
            state.base = None
            self._push(name, state, state.sent, state.sent_revision, None)
            return
        self.counters.nacks += 1
        error = error or "rejected (no reason given)"
        log.warning("proxy %s rejected config %s: %s", name, version, error)
        # A NACK of a push already superseded by what the proxy runs (the change was reverted
        # while in flight) leaves nothing refused outstanding.
        state.nack = None if state.synced else error
        self._answered(name, state)
        self._notify(name)

    # -- marking ----------------------------------------------------------------------------
    def mark(self, name: str) -> None:
        self._dirty.add(name)
        self._kick_now()

    def mark_all(self) -> None:
        self._all_dirty = True
        self._kick_now()

    def inputs_changed(self) -> None:
        """The registry (or the store) changed: the next pass marks the proxies it reaches."""
        self._moved = True
        self._kick_now()

    def _kick_now(self) -> None:
        self._last_mark = self._clock()
        self._kick.set()

    # -- running -----------------------------------------------------------------------------
    async def run(self) -> None:
        """Watch the store and reconcile until cancelled."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._watch_store())
            tg.create_task(self._loop())

    async def _watch_store(self) -> None:
        while True:
            async with self.store.watch() as watch:
                self.mark_all()  # level-based: whatever happened before this watch is re-read
                async for event in watch:
                    if event.type is EventType.ERROR:
                        break  # fell behind: re-watch (and re-read everything)
                    if event.object is not None:
                        self.revision = max(self.revision, event.object.resource_version)
                        self.note_write(event.object.resource_version)
                    self.inputs_changed()  # the pass works out whom it reaches

    async def _loop(self) -> None:
        while True:
            await self._kick.wait()
            await self.debounce()
            await self.reconcile_pass()

    async def debounce(self) -> None:
        """Wait until marks have been quiet for ``quiet`` s, or ``cap`` s after the first."""
        start = self._clock()
        while True:
            now = self._clock()
            deadline = min(self._last_mark + self.quiet, start + self.cap)
            if now >= deadline:
                break
            await self._sleep(deadline - now)
        self._kick.clear()

    async def reconcile_pass(self) -> None:
        """Rebuild the dirty proxies' snapshots and push those that changed."""
        names = set(self.states) if self._all_dirty else self._dirty & set(self.states)
        # Until the pass has compared the registry, any proxy may be reached by its change.
        self._in_pass = set(self.states) if self._moved else set(names)
        self._dirty, self._all_dirty, self._moved = set(), False, False
        try:
            await self._compute_and_push(names)
        finally:
            self._in_pass = set()
        self._release()
        self._release_later()
        self._notify()

    def pending(self, name: str) -> bool:
        """Whether a change (a resource, an endpoint) is yet to be computed into ``name``'s
        snapshot: its ACK of the current one does not mean it runs the latest state."""
        return self._all_dirty or self._moved or name in self._dirty or name in self._in_pass

    async def _compute_and_push(self, names: set[str]) -> None:
        started = self._clock()
        objects = await self.store.list()
        revision = max([self.revision, *(o.resource_version for o in objects)])
        self.revision = revision
        times = self.timeline.pass_started(revision, started)  # None: it reads no new write
        jwks = self.jwks
        if jwks is not None:
            jwks.want(jwks_uris((o.resource, o.resource_version) for o in objects))
        endpoints, idle = self.registry.endpoints(), self.registry.idle_sidecars()
        gateways = self.registry.gateways()
        builder = SnapshotBuilder([o.resource for o in objects], endpoints,
                                  jwks.jwks if jwks is not None else None,
                                  idle=idle, gateways=gateways)
        self.mesh = builder.mesh  # the current MeshConfig (the CA reads its certificate TTL)
        self.counters.passes += 1
        deltas = Deltas()
        for name in [n for n, s in self.states.items()
                     if s.sender is None and self.registry.get(n) is None]:
            del self.states[name]  # gone from the registry too: forget it
            names.discard(name)
        names |= self._reached(RegistryFacts.of(endpoints, idle, gateways),
                               {o.resource.key: (o.resource_version, o.resource)
                                for o in objects}, builder)
        self._in_pass = set(names)
        for name, unreached in self.states.items():
            if name not in names and unreached.latest_version is not None:
                # Its snapshot is the same at this revision (as "unchanged" below).
                if unreached.acked_version == unreached.latest_version:
                    self._advance(unreached, revision)
                elif unreached.sent_version == unreached.latest_version:
                    unreached.sent_revision = revision
                elif (unreached.queued is not None
                      and unreached.queued.version == unreached.latest_version):
                    unreached.queued_revision = revision
        for count, name in enumerate(sorted(names), 1):
            if count % _YIELD_EVERY == 0:
                # Let the streams write what was queued so far: holding every proxy's message
                # at once is what sets the control plane's peak memory in a full push.
                await asyncio.sleep(0)
            state, info = self.states.get(name), self.registry.get(name)
            if state is None or state.sender is None or info is None:
                continue
            computed = builder.computed
            try:
                built = builder.build(info)
            except Exception:  # a bug, not a config problem: count it, keep the others going
                self.counters.errors += 1
                log.exception("cannot build the snapshot of %s", name)
                self._dirty.add(name)  # not current: retried by the next pass (and pending)
                continue
            if builder.computed > computed:
                self.counters.computed += 1
            else:
                self.counters.shared += 1
            self._in_pass.discard(name)
            state.latest_version = built.version
            state.queued = None  # the pass decides anew (a full may wait in line again)
            if built.version == state.acked_version:
                self._advance(state, revision)  # same content: it includes this revision
                if state.base is None and state.sent_at is None:
                    # A reconnected proxy runs exactly this (its Register's config_version
                    # is this hash): the next change can go as a delta from it, as after an
                    # ACK (Envoy's initial_resource_versions); a wrong guess is NACKed → full.
                    state.base = built
                state.nack = None  # a NACKed change was reverted: nothing refused is pending
                if state.sent_at is not None and state.sent_version != built.version:
                    # The reverted change is still in flight: if the proxy ACKs it, it runs
                    # what was reverted, so look again once it answers.
                    state.deferred = True
                self.counters.unchanged += 1
            elif built.version == state.sent_version:
                state.sent_revision = revision
                self.counters.unchanged += 1
            elif (state.sent_at is not None
                  and self._clock() - state.sent_at < _ANSWER_TIMEOUT):
                # One snapshot in flight per proxy (as xDS): the newer one goes out when the
                # proxy answers, so a burst of changes never queues many 100 KB messages.
                state.deferred = True
                state.times = times
            else:
                state.times = times
                # A delta builds on what the proxy ACKed on this stream, with nothing else in
                # flight: an answer overdue may yet change what it runs.
                base = state.base if state.deltas and state.sent_at is None else None
                splices = (None if base is None or base.version != state.acked_version
                           else deltas.get(base, built))
                if splices is None and not self._fulls.room():
                    state.queued, state.queued_revision = built, revision
                    self._fulls.wait(name)
                else:
                    self._push(name, state, built, revision, splices)
        if times is not None:
            times.queued = self._clock()

    def _push(self, name: str, state: PushState, built: BuiltSnapshot, revision: int,
              splices: list[mesh_pb2.Splice] | None) -> None:
        """Send ``built``: as the delta ``splices`` from ``state.base``, or in full."""
        assert state.sender is not None
        state.queued = None
        self._fulls.sent(name, splices is None)
        self._nonces += 1
        state.nonce, state.sent_version = str(self._nonces), built.version
        state.sent_revision = revision
        state.sent_at = self._clock()
        state.sent, state.sent_delta = built, splices is not None
        if splices is not None and state.base is not None:
            message = mesh_pb2.ConfigMessage(version=built.version, nonce=state.nonce,
                                             base_version=state.base.version, delta=splices)
            self.counters.pushed_deltas += 1
            self.counters.pushed_bytes_delta += message.ByteSize()
        else:
            message = mesh_pb2.ConfigMessage(version=built.version, nonce=state.nonce,
                                             snapshot_json=built.data)
            self.counters.pushed_bytes_full += message.ByteSize()
        self.counters.pushed += 1
        if state.times is not None:
            state.times.pushes += 1
        state.sender(message)

    def _reached(self, facts: RegistryFacts, objects: Objects,
                 builder: SnapshotBuilder) -> set[str]:
        """The proxies whose snapshots read what changed in the registry or the store since
        the last pass (every proxy on the first pass, or when a mesh-wide input changed)."""
        services = None if self._facts is None else facts.changed(self._facts)
        resources = None if self._objects is None else changed_resources(self._objects, objects)
        self._facts, self._objects = facts, objects
        if services is None or resources is None:
            return set(self.states)
        if not services and not resources:
            return set()
        scopes = ScopeIndex(builder, {n: info for n in self.states
                                      if (info := self.registry.get(n)) is not None})
        reached = resources_reach(resources, scopes)
        if reached is None:
            return set(self.states)
        return reached | scopes.seeing_services(services) if services else reached

    # -- waiting for convergence ---------------------------------------------------------------
    def note_write(self, revision: int) -> None:
        """The store took a write of ``revision`` now (the start of its convergence)."""
        self.timeline.wrote(revision, self._clock())

    def _advance(self, state: PushState, revision: int, at: float | None = None) -> None:
        if revision > state.acked_revision:
            # The writes in between reached this proxy now (a stream's first advance: only
            # those written since it registered; the older ones were not sent to it).
            self.timeline.reached(state.acked_revision, revision,
                                  self._clock() if at is None else at,
                                  state.attached_at if state.acked_revision == 0 else None)
        state.acked_revision = revision

    def converged_seconds(self, revision: int) -> float | None:
        """From the write of ``revision`` to the moment the last proxy first ran a config
        including it, or None if that write (or its reaching any proxy) is not remembered.
        Later writes do not move it: it is that write's own time to converge."""
        return self.timeline.converged(revision)

    def _notify(self, name: str | None = None) -> None:
        """``name`` alone moved (an answer, a stream gone), or anyone (a pass, a new stream).
        A wait_synced call is woken only when its last laggard caught up, or to rescan: an
        ACK costs a set lookup per waiting call, not a wake-up and a scan of its laggards."""
        for wait in self._sync_waits:
            if name is None:
                wait.rescan = True
                wait.woken.set()
            elif name in wait.lagging:
                state = self.states.get(name)
                if state is None or not _lags(state, wait.revision):
                    wait.lagging.discard(name)
                    if not wait.lagging:
                        wait.woken.set()
        self._progress.set()
        self._progress = asyncio.Event()

    def lagging(self, revision: int) -> list[str]:
        """Connected proxies not yet running a config computed from ``revision`` or later."""
        return sorted(name for name, s in self.states.items() if _lags(s, revision))

    async def wait_synced(self, revision: int, timeout: float) -> list[str]:
        """Wait until no proxy lags ``revision``; returns the laggards ([] = synced)."""
        deadline = self._clock() + timeout
        wait = _SyncWait(revision, set(self.lagging(revision)))
        self._sync_waits.add(wait)
        try:
            while wait.lagging:
                remaining = deadline - self._clock()
                if remaining <= 0:
                    return sorted(wait.lagging)
                wait.woken.clear()
                try:
                    await asyncio.wait_for(wait.woken.wait(), remaining)
                except TimeoutError:
                    return self.lagging(revision)
                if wait.rescan:  # a pass ran or a proxy (re)connected: look at them all
                    wait.rescan, wait.lagging = False, set(self.lagging(revision))
            return []
        finally:
            self._sync_waits.discard(wait)


@dataclass(eq=False, slots=True)
class _SyncWait:
    """One wait_synced call: the proxies it still waits for (kept by ``_notify``)."""

    revision: int
    lagging: set[str]
    rescan: bool = False
    woken: asyncio.Event = field(default_factory=asyncio.Event)


def _lags(state: PushState, revision: int) -> bool:
    return state.sender is not None and (not state.synced or state.acked_revision < revision)

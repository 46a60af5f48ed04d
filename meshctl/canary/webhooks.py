"""A Canary's webhooks, called as Flagger calls them: its JSON payload POSTed with aiohttp
within each hook's timeout; what each answered, in words."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from meshctl.api.canary import Webhook
from meshctl.controlplane.store import Key

log = logging.getLogger("ami.canary")
RESULT_KEPT = 200  # characters of a result kept in status.webhooks


@dataclass(frozen=True, slots=True)
class HookResult:
    """How one call went: ``ok`` on a 2xx answer; ``result`` says what came back (``HTTP
    403``, ``timed out after 10s``, ``cannot connect: ...``)."""

    hook: Webhook
    ok: bool
    result: str

    def as_status(self, time: str) -> dict[str, Any]:
        """status.webhooks' entry (the result cut short: an error's text is unbounded)."""
        result = self.result if len(self.result) <= RESULT_KEPT else \
            self.result[:RESULT_KEPT - 3] + "..."
        return {"name": self.hook.name, "type": self.hook.type, "ok": self.ok,
                "result": result, "time": time}

    def said(self) -> str:
        return f"{self.hook.type} hook '{self.hook.name}': {self.result}"


def payload(hook: Webhook, name: str, namespace: str, phase: str, checksum: str,
            event: tuple[str, str] | None = None) -> dict[str, Any]:
    """Flagger's webhook payload; ``event``: (message, Normal|Warning) for event hooks."""
    body: dict[str, Any] = {"name": name, "namespace": namespace, "phase": phase,
                            "checksum": checksum, "type": hook.type,
                            "metadata": dict(hook.metadata)}
    if event is not None:
        body["eventMessage"], body["eventType"] = event
    return body


class Caller:
    """POSTs payloads over one aiohttp session (opened on first use, in the running loop).

    The control plane is not in the mesh: plain HTTP to a service's address is fine, and no
    proxy from the environment is used.
    """

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._fired: set[asyncio.Task[HookResult]] = set()
        # the last call fired on each queue (see `fire`): the next one waits for it
        self._queues: dict[Hashable, asyncio.Task[HookResult]] = {}

    async def call(self, hook: Webhook, body: Mapping[str, Any]) -> HookResult:
        """One call; never raises (a hook that hangs, refuses or errs is simply not 2xx)."""
        if self._session is None or self._session.closed:
            # no pool limit (aiohttp's default is 100 connections): calls that hang until
            # their timeout would make every other Canary's calls queue for a connection
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            async with asyncio.timeout(hook.timeout):
                async with self._session.post(hook.url, json=dict(body)) as response:
                    await response.read()  # the whole answer, so the connection is reused
                    result = HookResult(hook, 200 <= response.status < 300,
                                        f"HTTP {response.status}")
        except TimeoutError:
            result = HookResult(hook, False, f"timed out after {hook.timeout:g}s")
        except aiohttp.ClientConnectorError as exc:
            result = HookResult(hook, False, f"cannot connect: {exc.os_error or exc}")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            result = HookResult(hook, False, f"failed: {type(exc).__name__}: {exc}")
        if not result.ok:
            log.warning("canary %s/%s: %s", body.get("namespace"), body.get("name"),
                        result.said())
        return result

    async def call_all(self, calls: Iterable[tuple[Webhook, Mapping[str, Any]]]
                       ) -> list[HookResult]:
        """Several calls at once; results in the same order."""
        return list(await asyncio.gather(*(self.call(h, b) for h, b in calls)))

    def fire(self, hook: Webhook, body: Mapping[str, Any],
             answered: Callable[[HookResult], None] | None = None, *,
             queue: Hashable | None = None) -> None:
        """Call without waiting (event and post-rollout hooks); ``answered`` gets the
        result once it is in (logged either way). Calls fired on the same ``queue`` go one
        at a time, in the order fired: each is POSTed once the one before has answered (or
        timed out), so a receiver gets a run's events in order, not as the connections
        happen to get there (two events a few milliseconds apart could swap)."""
        previous = self._queues.get(queue) if queue is not None else None
        task = asyncio.get_running_loop().create_task(self._call_after(previous, hook, body))
        self._fired.add(task)  # a reference, so the task is not collected mid-call
        task.add_done_callback(self._fired.discard)
        task.add_done_callback(_log_fired)
        if queue is not None:
            self._queues[queue] = task
            task.add_done_callback(lambda t: self._dequeue(queue, t))
        if answered is not None:
            task.add_done_callback(
                lambda t: None if t.cancelled() or t.exception() else answered(t.result()))

    async def _call_after(self, previous: asyncio.Task[HookResult] | None, hook: Webhook,
                          body: Mapping[str, Any]) -> HookResult:
        if previous is not None:
            await asyncio.wait({previous})  # only its end: how it went is its own
        return await self.call(hook, body)

    def _dequeue(self, queue: Hashable, task: asyncio.Task[HookResult]) -> None:
        if self._queues.get(queue) is task:  # the queue's last call: nothing waits for it
            del self._queues[queue]

    async def drain(self) -> None:
        """Wait for every fired call (tests; shutdown)."""
        while self._fired:
            await asyncio.gather(*self._fired, return_exceptions=True)

    async def close(self) -> None:
        for task in self._fired:
            task.cancel()
        await asyncio.gather(*self._fired, return_exceptions=True)
        if self._session is not None:
            await self._session.close()


def _log_fired(task: asyncio.Task[HookResult]) -> None:
    if not task.cancelled() and task.exception() is None and task.result().ok:
        result = task.result()
        log.info("%s (fired)", result.said())


class Gates:
    """The gating calls of each Canary's current moment ("round": a start attempt or one
    analysis), made in the background: a slow hook holds up its own Canary only, never the
    sweep; ``results`` is None until they are in, and ``on_done`` says when they are."""

    def __init__(self, caller: Caller, on_done: Callable[[], None]) -> None:
        self.caller = caller
        self.on_done = on_done
        self._rounds: dict[Key, tuple[str, dict[str, asyncio.Task[list[HookResult]]]]] = {}

    def results(self, key: Key, round_id: str, kind: str,
                calls: Sequence[tuple[Webhook, Mapping[str, Any]]]) -> list[HookResult] | None:
        """The answers of this round's ``kind`` hooks: [] with none, None while in flight."""
        if not calls:
            return []
        current = self._rounds.get(key)
        if current is None or current[0] != round_id:
            self.forget(key)  # a new round asks again
            current = self._rounds[key] = (round_id, {})
        tasks = current[1]
        task = tasks.get(kind)
        if task is None:
            task = tasks[kind] = asyncio.get_running_loop().create_task(
                self.caller.call_all(calls))
            task.add_done_callback(lambda _: self.on_done())
        return task.result() if task.done() else None

    def forget(self, key: Key) -> None:
        _, tasks = self._rounds.pop(key, ("", {}))
        for task in tasks.values():
            task.cancel()

    def keep(self, keys: set[Key]) -> None:
        """Forget the Canaries not in ``keys`` (deleted)."""
        for key in set(self._rounds) - keys:
            self.forget(key)

    def in_flight(self) -> bool:
        return any(not t.done() for _, ts in self._rounds.values() for t in ts.values())

    async def settle(self) -> None:
        """Wait for every call in flight (tests drive the controller sweep by sweep)."""
        tasks = [t for _, ts in self._rounds.values() for t in ts.values()]
        await asyncio.gather(*tasks, return_exceptions=True)

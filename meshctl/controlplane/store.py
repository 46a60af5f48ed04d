"""The Store interface: versioned objects, status kept apart from spec, and a watch stream."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import enum
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from meshctl.api.errors import Issue
from meshctl.api.resources import Resource, validate_set

Key = tuple[str, str, str]
SourceErrors = list["SourceError"]
"""(kind, namespace, name): the identity of an object, same as ``Resource.key``."""

def canonical_content(resource: Resource) -> dict[str, Any]:
    """The object's declared content: what ``apply`` compares and dirstore writes to disk.

    Server-managed fields (resourceVersion, status) are dropped and the namespace is made
    explicit, so a document with and without ``namespace: default`` compare equal.
    """
    doc = json.loads(json.dumps(resource.to_dict()))  # deep copy, JSON-safe
    doc.pop("status", None)
    meta = doc.setdefault("metadata", {})
    for server_field in ("resourceVersion", "creationTimestamp", "uid", "generation"):
        meta.pop(server_field, None)
    meta["namespace"] = resource.namespace
    return dict(doc)


def content_equal(a: Resource, b: Resource) -> bool:
    """Whether two resources declare the same thing (ignoring server-managed fields)."""
    return canonical_content(a) == canonical_content(b)


@dataclass(frozen=True, slots=True)
class StoredObject:
    """A resource as the store holds it: the parsed document plus its store-assigned version."""

    resource: Resource
    resource_version: int
    source: str = ""  # dirstore: the file (relative to the root) it lives in

    @property
    def key(self) -> Key:
        return (self.resource.kind, self.resource.namespace, self.resource.name)

    def to_dict(self, status: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The wire form: the document with ``metadata.resourceVersion`` and optional status."""
        doc = canonical_content(self.resource)
        doc["metadata"]["resourceVersion"] = str(self.resource_version)
        if status:
            doc["status"] = json.loads(json.dumps(status))
        return doc


class EventType(enum.StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    ERROR = "ERROR"  # the watch ended abnormally (fell behind): relist and watch again


@dataclass(frozen=True, slots=True)
class Event:
    """A change: ``object`` is the new state (DELETED: the last one); ERROR has ``error``."""

    type: EventType
    object: StoredObject | None = None
    error: str | None = None
    status_only: bool = False  # MODIFIED by set_status: only watches that asked for it see it


class Watch(AsyncIterator[Event]):
    """One subscriber's ordered event stream; subscribed on creation, so no change is missed.

    A subscriber that falls more than ``max_backlog`` events behind gets one ERROR event and
    the stream ends (the Kubernetes "resourceVersion too old" contract: relist, then re-watch).
    """

    def __init__(self, hub: WatchHub, accept: Callable[[Event], bool], max_backlog: int) -> None:
        self._hub = hub
        self._accept = accept
        self._max_backlog = max_backlog
        self._queue: deque[Event | None] = deque()  # None marks the end of the stream
        self._ready = asyncio.Event()
        self._closed = False

    def _offer(self, event: Event) -> None:
        if self._closed or not self._accept(event):
            return
        if len(self._queue) >= self._max_backlog:
            self._queue.clear()
            self._queue.append(Event(EventType.ERROR, error="watch fell behind; relist"))
            self.close()
            return
        self._queue.append(event)
        self._ready.set()

    def close(self) -> None:
        """End the stream: events already queued are still delivered, then iteration stops."""
        if not self._closed:
            self._closed = True
            self._hub._subscribers.discard(self)
            self._queue.append(None)
            self._ready.set()

    async def __anext__(self) -> Event:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        if item is None:
            self._queue.append(None)  # stay ended for any later call
            raise StopAsyncIteration
        return item

    async def aclose(self) -> None:
        self.close()

    async def __aenter__(self) -> Watch:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(slots=True)
class WatchHub:
    """Fans events out to every open Watch, in publication order."""

    max_backlog: int = 10_000
    _subscribers: set[Watch] = field(default_factory=set)

    def subscribe(
        self,
        current: list[StoredObject],
        *,
        kind: str | None = None,
        namespace: str | None = None,
        replay: bool = False,
        status: bool = False,
    ) -> Watch:
        def accept(event: Event) -> bool:
            obj = event.object
            if obj is None:
                return True
            if event.status_only and not status:
                return False
            return (kind is None or obj.resource.kind == kind) and (
                namespace is None or obj.resource.namespace == namespace
            )

        watch = Watch(self, accept, self.max_backlog)
        if replay:
            for obj in current:
                watch._offer(Event(EventType.ADDED, obj))
        self._subscribers.add(watch)
        return watch

    def publish(self, event: Event) -> None:
        for watch in list(self._subscribers):
            watch._offer(event)

    def close_all(self) -> None:
        for watch in list(self._subscribers):
            watch.close()


class Store(abc.ABC):
    """What the control plane keeps its resources in (directory of YAML, memory, later etcd).

    Versions are integers that only grow; every create/update/delete takes a new one. Status
    (``status(key)``) is observed state written by the control plane: it is kept apart from
    the declared spec, does not change ``resource_version`` and emits a watch event (MODIFIED,
    ``status_only``) only to watches opened with ``status=True`` (``meshctl get -w``), so
    that the reconcile loop never wakes for it.
    """

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load persisted state and begin watching external changes (no-op by default)."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Stop background work and end all watches (no-op by default)."""

    @abc.abstractmethod
    async def get(self, kind: str, namespace: str, name: str) -> StoredObject | None: ...

    @abc.abstractmethod
    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> list[StoredObject]: ...

    @abc.abstractmethod
    async def create(self, obj: Resource) -> StoredObject:
        """Store a new object; Conflict if its key exists."""

    @abc.abstractmethod
    async def update(
        self, obj: Resource, expected_version: int | str | None = None
    ) -> StoredObject:
        """Replace an object; NotFound if absent, Conflict if ``expected_version`` is stale."""

    @abc.abstractmethod
    async def delete(
        self, kind: str, namespace: str, name: str, expected_version: int | str | None = None
    ) -> StoredObject:
        """Remove an object and return its last state; NotFound / Conflict as for update."""

    @abc.abstractmethod
    def watch(
        self, *, kind: str | None = None, namespace: str | None = None, replay: bool = False,
        status: bool = False,
    ) -> Watch:
        """Subscribe to changes from now on; ``replay`` first yields ADDED for current objects;
        ``status``: also a MODIFIED (``status_only``) event per ``set_status``."""

    @abc.abstractmethod
    async def status(self, key: Key) -> dict[str, Any]:
        """The object's status ({} if none was set); NotFound if the object does not exist."""

    @abc.abstractmethod
    async def set_status(self, key: Key, status: Mapping[str, Any]) -> None:
        """Replace the object's status; NotFound if the object does not exist."""

    async def check_write(self, key: Key) -> None:  # noqa: B027 - optional hook
        """Raise (a StoreError) if a create/update/delete of ``key`` would be refused for a
        reason of the store's own, not of the content (dirstore: the file that holds, or would
        hold, the object has a rejected hand edit). Lets a multi-object apply refuse before
        writing anything; no-op by default."""

    @contextlib.contextmanager
    def batch(self, resources: Sequence[Resource]) -> Iterator[None]:
        """The writes made inside are one change, already checked as a whole (an apply of
        several documents): a store that checks consistency per write judges each against
        the state once all of ``resources`` are written, not the partial state in between
        (a route's new subset may come from a policy written after it). No-op by default."""
        yield

    def errors(self) -> SourceErrors:
        """Documents the store could not accept (hand edits that failed validation)."""
        return []


@dataclass(frozen=True, slots=True)
class SourceError:
    """A rejected source (a file, for dirstore): the precise message and the keys it held."""

    source: str
    message: str
    keys: tuple[Key, ...] = ()


def new_issues(baseline: list[Resource], candidate: list[Resource]) -> list[Issue]:
    """Cross-document issues that ``candidate`` has and ``baseline`` had not.

    A change is judged by what it breaks, so an old inconsistency elsewhere in the store
    does not block every later write.
    """
    before = {str(issue) for issue in validate_set(baseline)}
    return [issue for issue in validate_set(candidate) if str(issue) not in before]


def overlay(current: list[Resource], changes: list[Resource], removed: set[Key]) -> list[Resource]:
    """``current`` with ``changes`` replacing objects of the same key and ``removed`` dropped."""
    changed = {r.key: r for r in changes}
    kept = [r for r in current if r.key not in changed and r.key not in removed]
    return kept + list(changes)

"""In-memory Store: the reference implementation, used by tests and as dirstore's live index."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from meshctl.api.resources import Resource
from meshctl.controlplane.errors import Conflict, NotFound
from meshctl.controlplane.store import (
    Event,
    EventType,
    Key,
    Store,
    StoredObject,
    Watch,
    WatchHub,
)


def check_version(current: StoredObject, expected: int | str | None) -> None:
    """Raise Conflict unless ``expected`` is absent or equals the current resourceVersion."""
    if expected is None or expected == "":
        return
    if str(expected) != str(current.resource_version):
        kind, ns, name = current.key
        raise Conflict(
            f"{kind} {ns}/{name}: resourceVersion {expected} is stale "
            f"(current is {current.resource_version}); re-read and retry"
        )


class MemStore(Store):
    """Objects in a dict; every change takes the next integer version and is published in order."""

    def __init__(self, *, max_backlog: int = 10_000) -> None:
        self._objects: dict[Key, StoredObject] = {}
        self._status: dict[Key, dict[str, Any]] = {}
        self._version = 0
        self._hub = WatchHub(max_backlog=max_backlog)

    async def close(self) -> None:
        self._hub.close_all()

    # -- reads -----------------------------------------------------------------------------
    async def get(self, kind: str, namespace: str, name: str) -> StoredObject | None:
        return self._objects.get((kind, namespace, name))

    async def list(
        self, kind: str | None = None, namespace: str | None = None
    ) -> list[StoredObject]:
        return [
            obj
            for key, obj in sorted(self._objects.items())
            if (kind is None or key[0] == kind) and (namespace is None or key[1] == namespace)
        ]

    def watch(
        self, *, kind: str | None = None, namespace: str | None = None, replay: bool = False,
        status: bool = False,
    ) -> Watch:
        current = [obj for _, obj in sorted(self._objects.items())]
        return self._hub.subscribe(current, kind=kind, namespace=namespace, replay=replay,
                                   status=status)

    # -- writes ----------------------------------------------------------------------------
    async def create(self, obj: Resource) -> StoredObject:
        self._check_create(obj)
        return self._commit(obj, source="")

    async def update(
        self, obj: Resource, expected_version: int | str | None = None
    ) -> StoredObject:
        current = self._check_update(obj, expected_version)
        return self._commit(obj, source=current.source)

    async def delete(
        self, kind: str, namespace: str, name: str, expected_version: int | str | None = None
    ) -> StoredObject:
        current = self._require((kind, namespace, name))
        check_version(current, expected_version)
        return self._commit_delete(current.key)

    # -- status ----------------------------------------------------------------------------
    async def status(self, key: Key) -> dict[str, Any]:
        self._require(key)
        return dict(self._status.get(key, {}))

    async def set_status(self, key: Key, status: Mapping[str, Any]) -> None:
        current = self._require(key)
        self._status[key] = dict(status)
        self._hub.publish(Event(EventType.MODIFIED, current, status_only=True))

    # -- shared with DirStore: checks happen before I/O, commits after --------------------
    def _require(self, key: Key) -> StoredObject:
        current = self._objects.get(key)
        if current is None:
            raise NotFound(f"{key[0]} {key[1]}/{key[2]} not found")
        return current

    def _check_create(self, obj: Resource) -> None:
        if obj.key in self._objects:
            raise Conflict(f"{obj.kind} {obj.namespace}/{obj.name} already exists")

    def _check_update(self, obj: Resource, expected: int | str | None) -> StoredObject:
        current = self._require(obj.key)
        check_version(current, expected)
        return current

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _commit(self, obj: Resource, source: str, version: int | None = None) -> StoredObject:
        """Record ``obj`` under a new (or the given) version and publish ADDED or MODIFIED."""
        existed = obj.key in self._objects
        stored = StoredObject(obj, self._next_version() if version is None else version, source)
        self._objects[obj.key] = stored
        self._hub.publish(Event(EventType.MODIFIED if existed else EventType.ADDED, stored))
        return stored

    def _commit_delete(self, key: Key) -> StoredObject:
        """Drop the object (and its status) and publish DELETED with its last state.

        The deletion takes a new store version (as in Kubernetes), so "wait until every proxy
        has everything up to version N" also covers deletes.
        """
        gone = self._objects.pop(key)
        gone = dataclasses.replace(gone, resource_version=self._next_version())
        self._status.pop(key, None)
        self._hub.publish(Event(EventType.DELETED, gone))
        return gone

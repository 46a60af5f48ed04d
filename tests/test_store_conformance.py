"""Conformance suite every Store implementation must pass (memstore and dirstore)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from meshctl.controlplane.dirstore import DirStore
from meshctl.controlplane.errors import Conflict, NotFound
from meshctl.controlplane.memstore import MemStore
from meshctl.controlplane.store import EventType, Store
from tests.conftest_store import next_event, policy

KIND = "DestinationPolicy"


@pytest.fixture(params=["memstore", "dirstore"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s: Store = MemStore() if request.param == "memstore" else DirStore(tmp_path / "store")
    await s.start()
    try:
        yield s
    finally:
        await s.close()


async def test_create_then_get_returns_object_with_version(store: Store) -> None:
    """A created object can be read back with its content and a positive version."""
    created = await store.create(policy("reviews"))
    got = await store.get(KIND, "default", "reviews")
    assert got is not None and got.resource_version == created.resource_version > 0
    assert got.to_dict()["spec"]["host"] == "reviews"
    assert got.to_dict()["metadata"]["resourceVersion"] == str(created.resource_version)
    assert await store.get(KIND, "default", "ratings") is None


async def test_list_filters_by_kind_and_namespace(store: Store) -> None:
    """list() narrows by kind and namespace and returns objects sorted by key."""
    await store.create(policy("reviews"))
    await store.create(policy("ratings"))
    await store.create(policy("reviews", namespace="staging"))
    assert [o.key[2] for o in await store.list(KIND, "default")] == ["ratings", "reviews"]
    assert [o.key[1] for o in await store.list(namespace="staging")] == ["staging"]
    assert len(await store.list()) == 3
    assert await store.list("Route") == []


async def test_create_existing_conflicts(store: Store) -> None:
    """Creating an object whose key exists raises Conflict and leaves the original."""
    first = await store.create(policy("reviews"))
    with pytest.raises(Conflict):
        await store.create(policy("reviews", subsets=("v9",)))
    got = await store.get(KIND, "default", "reviews")
    assert got is not None and got.resource_version == first.resource_version


async def test_update_checks_resource_version(store: Store) -> None:
    """An update with a stale version is a Conflict; the current version succeeds and bumps it."""
    v1 = await store.create(policy("reviews"))
    v2 = await store.update(policy("reviews", ("v1", "v2", "v3")), str(v1.resource_version))
    assert v2.resource_version > v1.resource_version
    with pytest.raises(Conflict):
        await store.update(policy("reviews", ("v1",)), v1.resource_version)
    got = await store.get(KIND, "default", "reviews")
    assert got is not None and len(got.to_dict()["spec"]["subsets"]) == 3
    with pytest.raises(NotFound):
        await store.update(policy("ratings"), None)


async def test_delete_removes_and_checks_version(store: Store) -> None:
    """delete() honours its version precondition, removes the object, answers with the
    version the deletion took, and 404s after."""
    obj = await store.create(policy("reviews"))
    with pytest.raises(Conflict):
        await store.delete(KIND, "default", "reviews", obj.resource_version + 100)
    gone = await store.delete(KIND, "default", "reviews", obj.resource_version)
    # the deletion's own version, newer than the object's (what /api/v1/sync waits for)
    assert gone.key == obj.key and gone.resource_version > obj.resource_version
    assert await store.get(KIND, "default", "reviews") is None
    with pytest.raises(NotFound):
        await store.delete(KIND, "default", "reviews")


async def test_watch_sees_changes_in_order(store: Store) -> None:
    """A watch delivers ADDED, MODIFIED, DELETED in order with increasing versions."""
    async with store.watch() as watch:
        a = await store.create(policy("reviews"))
        b = await store.update(policy("reviews", ("v1",)), a.resource_version)
        await store.delete(KIND, "default", "reviews")
        events = [await next_event(watch) for _ in range(3)]
    assert [e.type for e in events] == [EventType.ADDED, EventType.MODIFIED, EventType.DELETED]
    assert [e.object.resource_version for e in events if e.object][:2] == [
        a.resource_version, b.resource_version]


async def test_watch_filters_and_replays(store: Store) -> None:
    """replay=True starts with the current objects; kind/namespace filters drop the rest."""
    await store.create(policy("reviews"))
    async with store.watch(kind=KIND, namespace="staging", replay=True) as watch:
        await store.create(policy("ratings"))  # other namespace: filtered out
        await store.create(policy("ratings", namespace="staging"))
        event = await next_event(watch)
    assert (event.type, event.object and event.object.key) == (
        EventType.ADDED, (KIND, "staging", "ratings"))
    async with store.watch(replay=True) as watch:
        replayed = await next_event(watch)
    assert replayed.object is not None and replayed.object.key[1] == "default"


async def test_status_is_separate_from_spec(store: Store) -> None:
    """set_status neither changes the version nor emits an event; delete drops status."""
    obj = await store.create(policy("reviews"))
    assert await store.status(obj.key) == {}
    async with store.watch() as watch:
        await store.set_status(obj.key, {"observedVersion": 7})
        await store.create(policy("ratings"))  # fence: the next event must be this one
        event = await next_event(watch)
    assert event.object is not None and event.object.key[2] == "ratings"
    assert (await store.status(obj.key))["observedVersion"] == 7
    again = await store.get(*obj.key)
    assert again is not None and again.resource_version == obj.resource_version
    await store.delete(*obj.key)
    with pytest.raises(NotFound):
        await store.status(obj.key)
    with pytest.raises(NotFound):
        await store.set_status(obj.key, {"x": 1})


async def test_a_status_watch_sees_status_changes(store: Store) -> None:
    """watch(status=True) gets a MODIFIED (status_only) per set_status, same version; a
    plain watch (the reconcile loop's) does not."""
    obj = await store.create(policy("reviews"))
    async with store.watch(status=True) as watch, store.watch() as plain:
        await store.set_status(obj.key, {"phase": "Progressing"})
        await store.create(policy("ratings"))  # fence
        event, fenced = await next_event(watch), await next_event(plain)
    assert (event.type, event.status_only) == (EventType.MODIFIED, True)
    assert event.object is not None and event.object.key == obj.key
    assert event.object.resource_version == obj.resource_version
    assert fenced.object is not None and fenced.object.key[2] == "ratings"

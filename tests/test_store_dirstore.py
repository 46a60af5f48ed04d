"""DirStore specifics: hand edits go live, bad edits are rejected precisely, writes are atomic."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from meshctl.controlplane.dirstore import DirStore
from meshctl.controlplane.errors import Conflict
from meshctl.controlplane.store import EventType
from tests.conftest_store import next_event, policy, policy_doc, route_doc
from tests.fakes import FakeClock
from tests.helpers_mesh import ROOT, http_json, start_control_plane, wait_for
from tests.tools import required_tool

KIND = "DestinationPolicy"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[DirStore]:
    s = DirStore(tmp_path / "store")
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def write(path: Path, *docs: object, prefix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(prefix + yaml.safe_dump_all(docs, sort_keys=False))


async def test_hand_written_multi_document_file_goes_live(store: DirStore) -> None:
    """A multi-document file dropped anywhere under the root is loaded by the watcher."""
    async with store.watch() as watch:
        write(store.root / "team" / "reviews.yaml", policy_doc("reviews"),
              route_doc("reviews", {"v1": 90, "v2": 10}))
        events = [await next_event(watch), await next_event(watch)]
    assert {(e.type, e.object.key[0]) for e in events if e.object} == {
        (EventType.ADDED, "DestinationPolicy"), (EventType.ADDED, "Route")}
    route = await store.get("Route", "default", "reviews")
    assert route is not None and route.source == "team/reviews.yaml"


async def test_invalid_edit_keeps_last_good_and_reports_precisely(store: DirStore) -> None:
    """A schema error in a hand edit is rejected: old object live, no event, precise error."""
    path = store.root / "reviews.yaml"
    async with store.watch() as watch:
        write(path, policy_doc("reviews"))
        good = (await next_event(watch)).object
        bad = policy_doc("reviews")
        bad["spec"]["loadBalancer"] = "FASTEST"
        write(path, bad)
        write(store.root / "fence.yaml", policy_doc("fence"))  # processed after the bad edit
        event = await next_event(watch)
    assert event.object is not None and event.object.key[2] == "fence"
    live = await store.get(KIND, "default", "reviews")
    assert good is not None and live is not None
    assert live.resource_version == good.resource_version
    [error] = store.errors()
    assert error.source == "reviews.yaml"
    assert error.message.startswith("reviews.yaml doc 1: spec.loadBalancer:")
    [condition] = (await store.status(live.key))["conditions"]
    assert (condition["type"], condition["status"]) == ("Accepted", "False")
    assert condition["message"] == error.message


async def test_a_rejected_edit_is_a_status_event_for_status_watches(store: DirStore) -> None:
    """`meshctl get -w` sees a rejected hand edit: the object's Accepted=False, no new
    version (the reconcile loop's plain watch saw nothing, as above)."""
    path = store.root / "reviews.yaml"
    async with store.watch(status=True) as watch:
        write(path, policy_doc("reviews"))
        good = (await next_event(watch)).object
        bad = policy_doc("reviews")
        bad["spec"]["loadBalancer"] = "FASTEST"
        write(path, bad)
        event = await next_event(watch)
    assert (event.type, event.status_only) == (EventType.MODIFIED, True)
    assert good is not None and event.object is not None
    assert event.object.resource_version == good.resource_version
    [condition] = (await store.status(good.key))["conditions"]
    assert condition["status"] == "False"


async def test_yaml_error_then_fix(store: DirStore) -> None:
    """Broken YAML is reported with its line; fixing the file accepts it again."""
    path = store.root / "reviews.yaml"
    async with store.watch() as watch:
        write(path, policy_doc("reviews"))
        await next_event(watch)
        path.write_text("kind: [unclosed\n")
        write(store.root / "fence.yaml", policy_doc("fence"))
        await next_event(watch)
        assert "invalid YAML: line" in store.errors()[0].message
        write(path, policy_doc("reviews", ("v1",)))
        fixed = await next_event(watch)
    assert fixed.type is EventType.MODIFIED and store.errors() == []
    [condition] = (await store.status(("DestinationPolicy", "default", "reviews")))["conditions"]
    assert condition["status"] == "True"


async def test_deeply_nested_edit_is_rejected_and_the_watcher_lives_on(store: DirStore) -> None:
    """A 5,000-deep hand edit is rejected with its line (no RecursionError killing the
    watcher): later edits still go live."""
    path = store.root / "reviews.yaml"
    async with store.watch() as watch:
        write(path, policy_doc("reviews"))
        await next_event(watch)
        path.write_text(path.read_text() + "status: " + "[" * 5000 + "]" * 5000 + "\n")
        write(store.root / "fence.yaml", policy_doc("fence"))
        await next_event(watch)
        write(store.root / "fence2.yaml", policy_doc("fence2"))
        await next_event(watch)
    [error] = store.errors()
    assert error.message == ("reviews.yaml doc 1: invalid YAML: line 15, column 108: "
                             "nested deeper than 100 levels")


async def test_reverting_to_the_last_good_bytes_clears_the_rejection(store: DirStore) -> None:
    """Undoing a bad edit by restoring the file byte for byte accepts it again and unblocks
    API writes to it (the content equals what is live, so nothing else changes)."""
    path = store.root / "reviews.yaml"
    async with store.watch() as watch:
        write(path, policy_doc("reviews"))
        good = (await next_event(watch)).object
        good_bytes = path.read_bytes()
        path.write_text("kind: [unclosed\n")
        write(store.root / "fence.yaml", policy_doc("fence"))
        await next_event(watch)
        assert store.errors() != []
        path.write_bytes(good_bytes)
        write(store.root / "fence2.yaml", policy_doc("fence2"))
        await next_event(watch)
    assert store.errors() == []
    live = await store.get(KIND, "default", "reviews")
    assert good is not None and live is not None
    assert live.resource_version == good.resource_version
    [condition] = (await store.status(live.key))["conditions"]
    assert (condition["type"], condition["status"]) == ("Accepted", "True")
    await store.update(policy("reviews", ("v1", "v2")))  # no "invalid edit on disk" conflict


async def test_cross_document_breakage_is_rejected(store: DirStore) -> None:
    """An edit that leaves a Route pointing at a removed subset is rejected with its path."""
    async with store.watch() as watch:
        write(store.root / "dp.yaml", policy_doc("reviews", ("v1", "v2")))
        write(store.root / "route.yaml", route_doc("reviews", {"v1": 50, "v2": 50}))
        await next_event(watch)
        await next_event(watch)
        write(store.root / "dp.yaml", policy_doc("reviews", ("v1",)))
        write(store.root / "fence.yaml", policy_doc("fence"))
        await next_event(watch)
    assert "unknown subset 'v2'" in store.errors()[0].message
    assert "spec.rules[0].backends[1].subset" in store.errors()[0].message


async def test_deleting_file_deletes_its_objects(store: DirStore) -> None:
    """Removing a file by hand deletes every object it defined."""
    path = store.root / "two.yaml"
    async with store.watch() as watch:
        write(path, policy_doc("a"), policy_doc("b"))
        await next_event(watch)
        await next_event(watch)
        path.unlink()
        gone = {(await next_event(watch)).type for _ in range(2)}
    assert gone == {EventType.DELETED} and await store.list() == []


async def test_api_write_is_atomic_and_uses_layout(store: DirStore) -> None:
    """API writes land at kind/namespace/name.yaml and leave no temp files behind."""
    created = await store.create(policy("reviews"))
    await store.update(policy("reviews", ("v1",)), created.resource_version)
    path = store.root / "destinationpolicy" / "default" / "reviews.yaml"
    assert yaml.safe_load(path.read_text())["spec"]["subsets"] == [
        {"name": "v1", "labels": {"version": "v1"}}]
    leftovers = [n for _, _, names in os.walk(store.root) for n in names if n.endswith(".tmp")]
    assert leftovers == []
    await store.delete(KIND, "default", "reviews")
    assert not path.exists()


async def test_api_update_keeps_other_documents_and_comments(store: DirStore) -> None:
    """Updating an object in a hand-written multi-doc file rewrites only its document."""
    path = store.root / "mesh.yaml"
    async with store.watch() as watch:
        write(path, policy_doc("a"), policy_doc("b"), prefix="# owned by team-a\n")
        await next_event(watch)
        await next_event(watch)
    b = await store.get(KIND, "default", "b")
    assert b is not None
    await store.update(policy("b", ("v3",)), b.resource_version)
    text = path.read_text()
    assert text.startswith("# owned by team-a\n")
    docs = list(yaml.safe_load_all(text))
    assert [d["spec"]["subsets"][0]["name"] for d in docs] == ["v1", "v3"]


async def test_restart_reloads_and_keeps_versions(tmp_path: Path) -> None:
    """After a restart objects reload from disk; unchanged keep their version, stale fails."""
    root = tmp_path / "store"
    first = DirStore(root, watch_files=False)
    await first.start()
    a = await first.create(policy("a"))
    b = await first.create(policy("b"))
    await first.close()
    write(root / "destinationpolicy" / "default" / "b.yaml", policy_doc("b", ("v7",)))
    second = DirStore(root, watch_files=False)
    await second.start()
    try:
        a2, b2 = await second.get(*a.key), await second.get(*b.key)
        assert a2 is not None and a2.resource_version == a.resource_version
        assert b2 is not None and b2.resource_version > b.resource_version
        with pytest.raises(Conflict):
            await second.update(policy("b"), b.resource_version)
    finally:
        await second.close()


def test_fifos_and_oversized_files_never_stall_the_control_plane(tmp_path: Path) -> None:
    """A FIFO named *.yaml (at start or added later) and a file over 1 MiB are rejected, each
    reported once, without blocking: a real control plane keeps answering, last good live."""
    config = tmp_path / "mesh"
    write(config / "reviews.yaml", policy_doc("reviews"))
    os.mkfifo(config / "at-start.yaml")
    cp = start_control_plane(tmp_path, config_dir=config)
    try:
        os.mkfifo(config / "later.yaml")
        padded = yaml.safe_dump(policy_doc("reviews", ("v1",))) + "#" * (1 << 20) + "\n"
        (config / ".reviews.tmp").write_text(padded)  # renamed: the watcher sees it whole
        (config / ".reviews.tmp").rename(config / "reviews.yaml")

        def rejected() -> dict[str, str] | None:
            status, body = http_json(cp.info["api"] + "/api/v1/errors", timeout=2)
            found = {e["source"]: e["message"] for e in body["items"]} if status == 200 else {}
            return found if len(found) == 3 else None

        errors = wait_for(rejected, 10, "three rejected files")
        for fifo in ("at-start.yaml", "later.yaml"):
            assert errors[fifo] == (f"{fifo}: not a regular file (a FIFO, socket or device?): "
                                    "not read")
        assert errors["reviews.yaml"] == (f"reviews.yaml: too large: {len(padded)} bytes, the "
                                          "limit is 1048576 (as for an API request body)")
        status, live = http_json(cp.info["api"] + "/api/v1/namespaces/default/"
                                 "destinationpolicies/reviews", timeout=2)
        assert status == 200 and len(live["spec"]["subsets"]) == 2
        assert live["status"]["conditions"][0]["status"] == "False"
    finally:
        cp.stop()
    for name in ("at-start.yaml", "later.yaml", "reviews.yaml"):
        assert cp.output().count(f"rejected {name};") == 1, cp.output()


async def test_a_checker_crash_rejects_that_file_and_the_watcher_goes_on(
        store: DirStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected exception while checking one hand-edited file (a validator bug, as
    `requestsPerSecond: .inf` once was) rejects that file; it does not end the file watcher,
    so later edits still go live."""
    import meshctl.controlplane.dirstore as dirstore

    real = dirstore.load_documents

    def crashing(text: str, source: str, lists: bool = False) -> list:  # type: ignore[type-arg]
        if "crash-me" in text:
            raise OverflowError("cannot convert float infinity to integer")
        return real(text, source)

    monkeypatch.setattr(dirstore, "load_documents", crashing)
    async with store.watch() as watch:
        write(store.root / "bad.yaml", policy_doc("crash-me"))
        write(store.root / "fence.yaml", policy_doc("fence"))
        event = await next_event(watch)
        assert event.object is not None and event.object.key[2] == "fence"
        [error] = store.errors()
        assert error.source == "bad.yaml" and "OverflowError" in error.message
        write(store.root / "later.yaml", policy_doc("later"))
        event = await next_event(watch)
    assert event.object is not None and event.object.key[2] == "later"


async def test_a_file_read_empty_mid_write_keeps_its_objects(tmp_path: Path) -> None:
    """An editor truncating a file before writing it: read while empty, the file's objects
    stay (no event) until it is still empty `empty_settle` seconds later; written back in
    the meantime, nothing happened at all."""
    clock = FakeClock(0.0)
    store = DirStore(tmp_path / "store", watch_files=False, monotonic=clock)
    await store.start()
    try:
        path = store.root / "one.yaml"
        async with store.watch() as watch:
            write(path, policy_doc("a"), policy_doc("b"))
            await store.rescan()
            assert {(await next_event(watch)).type for _ in range(2)} == {EventType.ADDED}
            content = path.read_bytes()
            versions = sorted(o.resource_version for o in await store.list())
            path.write_bytes(b"")  # the truncation, before the editor's write
            await store.rescan()
            clock.now += 0.9
            await store.rescan()
            assert sorted(o.resource.name for o in await store.list()) == ["a", "b"]
            path.write_bytes(content)  # the write lands
            await store.rescan()
            clock.now += 5
            await store.rescan()
            # nothing changed at all: no write, no new resourceVersion
            assert sorted(o.resource_version for o in await store.list()) == versions

            path.write_text("# emptied on purpose\n")  # a deliberate emptying is believed...
            await store.rescan()
            assert len(await store.list()) == 2
            clock.now += 1.0  # ...once it is still empty a settle later
            await store.rescan()
            assert {(await next_event(watch)).type for _ in range(2)} == {EventType.DELETED}
            assert await store.list() == []
    finally:
        await store.close()


async def test_an_emptied_file_is_rescanned_by_itself_after_the_settle(tmp_path: Path) -> None:
    """With the watcher: the look again after the settle needs no further change."""
    store = DirStore(tmp_path / "store", empty_settle=0.3)
    await store.start()
    try:
        path = store.root / "one.yaml"
        async with store.watch() as watch:
            write(path, policy_doc("a"))
            assert (await next_event(watch)).type == EventType.ADDED
            path.write_bytes(b"")
            assert (await next_event(watch)).type == EventType.DELETED
        assert await store.list() == []
    finally:
        await store.close()


async def test_a_restart_restores_the_last_good_version_of_a_file_now_invalid(
        tmp_path: Path) -> None:
    """In process, as tests/test_store_dirstore_mesh.py with a real control plane: the state
    file holds each file's last good objects (mode 0600), so a file made invalid while the
    store was down keeps them live, with their versions, and its error says so; one invalid
    with nothing on record (a state file written before contents were kept) has nothing."""
    root = tmp_path / "store"
    write(root / "reviews.yaml", policy_doc("reviews"), route_doc("reviews", {"v1": 90, "v2": 10}))
    first = DirStore(root, watch_files=False)
    await first.start()
    before = {o.key: o.resource_version for o in await first.list()}
    await first.close()
    write(root / "reviews.yaml", policy_doc("reviews"), route_doc("reviews", {"v1": 60, "v2": 60}))
    second = DirStore(root, watch_files=False)
    await second.start()
    try:
        assert {o.key: o.resource_version for o in await second.list()} == before
        [error] = second.errors()
        assert error.message.startswith("reviews.yaml doc 2: spec.rules[0].backends: weights "
                                        "sum to 120, must be 100\n"), error.message
        assert error.message.endswith("reviews.yaml: its last good version, restored from "
                                      f"{root / '.ami' / 'state.json'} at start, stays live")
        [condition] = (await second.status(("Route", "default", "reviews")))["conditions"]
        assert condition["status"] == "False"
    finally:
        await second.close()
    state = root / ".ami" / "state.json"
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    saved = json.loads(state.read_text())
    del saved["files"]  # as an earlier version wrote it
    state.write_text(json.dumps(saved))
    third = DirStore(root, watch_files=False)
    await third.start()
    try:
        assert await third.list() == []
        assert third.errors()[0].message.startswith("reviews.yaml doc 2")
    finally:
        await third.close()


async def test_a_move_between_files_is_judged_as_one_change(tmp_path: Path) -> None:
    """A policy moved to another file while the route's file loses it: both files change at
    once, each alone invalid against the other's old content; together they go live, and the
    moved policy, unchanged, keeps its version (no event for it)."""
    store = DirStore(tmp_path / "store", watch_files=False)
    await store.start()
    try:
        write(store.root / "reviews.yaml", policy_doc("reviews"),
              route_doc("reviews", {"v1": 90, "v2": 10}))
        await store.rescan()
        dp = await store.get(KIND, "default", "reviews")
        assert dp is not None and dp.source == "reviews.yaml"
        async with store.watch() as watch:
            write(store.root / "reviews.yaml", route_doc("reviews", {"v1": 80, "v2": 20}))
            write(store.root / "dp-reviews.yaml", policy_doc("reviews"))
            await store.rescan()
            event = await next_event(watch)
        assert store.errors() == []
        assert event.object is not None and event.object.key[0] == "Route"
        moved = await store.get(KIND, "default", "reviews")
        assert moved is not None and moved.source == "dp-reviews.yaml"
        assert moved.resource_version == dp.resource_version
        # two new files defining the same key: the first (sorted) keeps it
        write(store.root / "b.yaml", policy_doc("ratings"))
        write(store.root / "a.yaml", policy_doc("ratings"))
        await store.rescan()
        [error] = store.errors()
        assert error.message == ("b.yaml doc 1: metadata.name: duplicate DestinationPolicy "
                                 "default/ratings, already defined in a.yaml doc 1")
    finally:
        await store.close()


async def test_a_renamed_file_moves_its_objects(tmp_path: Path) -> None:
    """A file renamed (`git mv`, an editor's save-as-then-delete) or gone while another takes
    its objects over: they move, keeping version and status, with no event; they were
    deleted and added again (status, such as a Canary's progress, lost) before."""
    store = DirStore(tmp_path / "store", watch_files=False)
    await store.start()
    try:
        write(store.root / "reviews.yaml", policy_doc("reviews"),
              route_doc("reviews", {"v1": 90, "v2": 10}))
        await store.rescan()
        dp = await store.get(KIND, "default", "reviews")
        assert dp is not None
        await store.set_status(dp.key, {"note": "kept"})
        async with store.watch() as watch:
            (store.root / "team").mkdir()
            (store.root / "reviews.yaml").rename(store.root / "team" / "reviews.yaml")
            await store.rescan()
            # one file gone, another holding its route changed: a change, not a delete
            (store.root / "team" / "reviews.yaml").unlink()
            write(store.root / "route.yaml", route_doc("reviews", {"v1": 50, "v2": 50}))
            write(store.root / "dp.yaml", policy_doc("reviews"))
            await store.rescan()
            write(store.root / "fence.yaml", policy_doc("fence"))
            await store.rescan()
            events = [await next_event(watch), await next_event(watch)]
        assert [(e.type, e.object.key[2]) for e in events if e.object] == [
            (EventType.MODIFIED, "reviews"), (EventType.ADDED, "fence")]
        assert events[0].object is not None and events[0].object.key[0] == "Route"
        moved = await store.get(KIND, "default", "reviews")
        assert moved is not None and moved.source == "dp.yaml"
        assert moved.resource_version == dp.resource_version
        assert await store.status(dp.key) == {"note": "kept"}
        assert store.errors() == []
        state = json.loads((store.root / ".ami" / "state.json").read_text())
        assert sorted(state["files"]) == ["dp.yaml", "fence.yaml", "route.yaml"]
    finally:
        await store.close()


async def test_a_file_that_cannot_be_read_is_rejected_and_listed(tmp_path: Path) -> None:
    """A symlink loop (permission denied: the test below): a rejection like any other (listed
    by errors(), in the objects' conditions, last good version live, an API write refused with
    it), not only a log line repeated on every rescan."""
    store = DirStore(tmp_path / "store", watch_files=False)
    await store.start()
    path = store.root / "reviews.yaml"
    try:
        write(path, policy_doc("reviews"))
        await store.rescan()
        good = path.read_bytes()
        path.unlink()
        (store.root / ".loop.yaml").symlink_to(path)  # (root reads any file: a loop it cannot)
        path.symlink_to(store.root / ".loop.yaml")
        await store.rescan()
        [error] = store.errors()
        assert error.source == "reviews.yaml"
        assert error.message.startswith("reviews.yaml: cannot be read: Too many levels of")
        live = await store.get(KIND, "default", "reviews")
        assert live is not None
        [condition] = (await store.status(live.key))["conditions"]
        assert (condition["status"], condition["message"]) == ("False", error.message)
        with pytest.raises(Conflict, match="cannot be read"):
            await store.update(policy("reviews", ("v1",)))
        path.unlink()
        path.write_bytes(good)  # readable again, as it was: valid again
        await store.rescan()
        assert store.errors() == [] and await store.get(KIND, "default", "reviews") is not None
    finally:
        await store.close()


@pytest.mark.parametrize("text", ['{"version": 1e400, "objects": {}}', '{"version": 7, "obj',
                                  '["a", "list"]', '{"version": 7, "objects": {}, "files": 3}'])
async def test_an_unreadable_state_file_is_kept_aside(tmp_path: Path, text: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Truncated, foreign or absurd (a version of 1e400 crashed the start): the directory
    is read without it, and a copy of it is kept, since it is rewritten at once."""
    root, state = tmp_path / "store", tmp_path / "store" / ".ami" / "state.json"
    write(root / "reviews.yaml", policy_doc("reviews"))
    state.parent.mkdir(parents=True)
    state.write_text(text)
    store = DirStore(root, watch_files=False)
    await store.start()
    try:
        assert await store.get(KIND, "default", "reviews") is not None
        assert (state.parent / "state.json.unreadable").read_text() == text
        assert json.loads(state.read_text())["files"]["reviews.yaml"]
        assert "cannot be read" in caplog.text and "state.json.unreadable" in caplog.text
    finally:
        await store.close()


async def test_another_config_dirs_last_good_versions_are_not_restored(tmp_path: Path) -> None:
    """One --state-dir for two config dirs (serve's default is ./.ami): a file of the second
    invalid at start had the first's file of the same name restored live as its last good
    version."""
    state_dir = tmp_path / "state"
    first = DirStore(tmp_path / "prod", state_dir=state_dir, watch_files=False)
    write(first.root / "policies.yaml", policy_doc("payments"))
    await first.start()
    await first.close()
    (tmp_path / "staging").mkdir()
    (tmp_path / "staging" / "policies.yaml").write_text("kind: [not valid\n")
    second = DirStore(tmp_path / "staging", state_dir=state_dir, watch_files=False)
    await second.start()
    try:
        assert await second.list() == []
        [error] = second.errors()
        assert error.source == "policies.yaml" and "restored" not in error.message
    finally:
        await second.close()
    again = DirStore(tmp_path / "staging", state_dir=state_dir, watch_files=False)
    await again.start()  # (its own state: still nothing of prod)
    try:
        assert await again.list() == []
    finally:
        await again.close()


async def test_a_symlinked_directory_is_followed_once(tmp_path: Path) -> None:
    """`mesh/team -> ../shared/team`: its files are loaded, and edits in it go live, as a
    symlinked file's do (its files were silently left out); a link back up is walked once."""
    shared = tmp_path / "shared" / "team"
    write(shared / "q.yaml", policy_doc("teamq"))
    root = tmp_path / "mesh"
    root.mkdir()
    (root / "team").symlink_to(shared)
    (root / "team-again").symlink_to(shared)  # the same directory: one path for its files
    (shared / "up").symlink_to(root)  # a loop
    store = DirStore(root)
    await store.start()
    try:
        q = await store.get(KIND, "default", "teamq")
        assert q is not None and q.source == "team/q.yaml"
        assert store.errors() == []
        async with store.watch() as watch:
            write(shared / "r.yaml", policy_doc("teamr"))
            event = await next_event(watch)
        assert event.object is not None and event.object.source == "team/r.yaml"
    finally:
        await store.close()


DENIED_SCENARIO = """\
import asyncio, json, os, sys
from pathlib import Path
import yaml
from meshctl.controlplane.dirstore import DirStore
from tests.conftest_store import policy_doc

root = Path(sys.argv[1])
for rel, name in (("team/a.yaml", "teama"), ("c.yaml", "c")):
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(yaml.safe_dump(policy_doc(name)))

async def seen(store):
    return {"live": {o.key[2]: o.resource_version for o in await store.list()},
            "errors": [e.message for e in store.errors()]}

async def main():
    out = []
    store = DirStore(root, watch_files=False)
    await store.start()
    out.append(await seen(store))
    os.chmod(root / "team", 0)
    os.chmod(root / "c.yaml", 0)
    await store.rescan()
    out.append(await seen(store))
    await store.close()
    store = DirStore(root, watch_files=False)  # a restart while they are unreadable
    await store.start()
    out.append(await seen(store))
    os.chmod(root / "team", 0o755)
    os.chmod(root / "c.yaml", 0o644)
    await store.rescan()
    out.append(await seen(store))
    await store.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_a_directory_that_cannot_be_listed_keeps_its_files(tmp_path: Path) -> None:
    """`chmod 000 team/` (or a directory of another user): its files are not gone, only
    unreadable, so they are rejected with their last good version live, as an unreadable file
    is, across a restart too; they were deleted, silently, and added again once readable. Run
    without the capability to override permissions (root has it)."""
    prefix = []
    if os.geteuid() == 0:
        prefix = [required_tool("setpriv", hint="util-linux"), "--bounding-set",
                  "-dac_override,-dac_read_search", "--inh-caps=-all", "--"]
    done = subprocess.run([*prefix, sys.executable, "-c", DENIED_SCENARIO,
                           str(tmp_path / "mesh")], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    os.chmod(tmp_path / "mesh" / "team", 0o755)  # (for pytest's clean-up, whatever happened)
    assert done.returncode == 0, done.stderr
    start, denied, restarted, readable = json.loads(done.stdout)
    assert start == {"live": {"c": 1, "teama": 2}, "errors": []}
    assert denied["live"] == start["live"]
    assert denied["errors"] == ["c.yaml: cannot be read: Permission denied",
                                "team/a.yaml: cannot be read: Permission denied"]
    assert restarted["live"] == start["live"]
    assert [e.splitlines()[0] for e in restarted["errors"]] == denied["errors"]
    assert readable == start

"""The default Store: a directory of YAML files (GitOps-friendly) whose hand edits go live.

Layout. Objects written through the API go to ``<root>/<kind-lowercase>/<namespace>/<name>.yaml``;
any other visible ``*.yaml``/``*.yml`` under the root (multi-document files too) is loaded as
well, and an API update rewrites the object's document in whichever file holds it, keeping the
other documents' text and comments. Dot-files and dot-directories are ignored, except that a
change under a ``..`` name (a Kubernetes ConfigMap volume's ``..data`` symlink swap) triggers a
rescan of the visible files, which are symlinks through it.

Hand edits. A watcher (``watchfiles``) rescans on change. A file is accepted or rejected as a
whole: a YAML or schema error, a key already defined in another file, or a cross-document issue
the change introduces (``validate_set``) rejects it. Then its last good objects stay live,
watchers see nothing, the error is logged, listed by ``errors()`` and written into each of its
objects' ``status.conditions`` (``type: Accepted, status: "False"``). A name that is not a
regular file (a FIFO would block the event loop forever) or a file over 1 MiB (the API's body
limit) is rejected the same way, reported once, and never read past the limit. Deleting a file
deletes its objects. A file that still exists but now holds no document, where it held some,
is taken at its word only if it still holds none ``empty_settle`` seconds later: an editor that
truncates a file and then writes it leaves it empty for a moment, and read then, every object
of the file would be deleted (a Route's traffic spread over every subset) until the write.

resourceVersion. One integer counter for the whole store; every change takes the next value.
``<state-dir>/state.json`` (default ``<root>/.ami/``) keeps the counter and, per object, its
version and content hash, so after a restart unchanged objects keep their version, changed
ones get a new one, and a client holding a pre-restart version of a changed object gets a
Conflict. Status is observed state and lives in memory only (the control plane recomputes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import watchfiles
import yaml

from meshctl.api.errors import ValidationError
from meshctl.api.resources import Resource, load_documents
from meshctl.controlplane.dirfiles import (
    RefusedFile,
    atomic_write,
    is_hidden,
    read_file,
    remove_file,
    rewrite_document,
    yaml_files,
)
from meshctl.controlplane.errors import Conflict, Invalid
from meshctl.controlplane.memstore import MemStore, check_version
from meshctl.controlplane.store import (
    Event,
    EventType,
    Key,
    SourceError,
    SourceErrors,
    StoredObject,
    canonical_content,
    content_equal,
    new_issues,
    overlay,
)

log = logging.getLogger(__name__)
_PATH_SEGMENT = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_PROBE = ".ami-watch-probe"


@dataclass(frozen=True, slots=True)
class _FileState:
    digest: str  # sha256 of the accepted bytes
    keys: tuple[Key, ...]


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _content_hash(resource: Resource) -> str:
    return _digest(json.dumps(canonical_content(resource), sort_keys=True).encode())


def _doc_key(doc: object) -> Key | None:
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        return None
    meta = doc["metadata"]
    return (str(doc.get("kind")), str(meta.get("namespace") or "default"), str(meta.get("name")))


class DirStore(MemStore):
    """A directory of YAML files as the source of truth; see the module docstring."""

    def __init__(
        self,
        root: str | Path,
        *,
        state_dir: str | Path | None = None,
        clock: Callable[[], float] = time.time,
        watch_files: bool = True,
        debounce_ms: int = 200,
        max_backlog: int = 10_000,
        empty_settle: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(max_backlog=max_backlog)
        self.root = Path(root).resolve()
        self._state_file = Path(state_dir or self.root / ".ami") / "state.json"
        self._clock = clock
        self._watch_files = watch_files
        self._debounce_ms = debounce_ms
        self._files: dict[str, _FileState] = {}
        self._rejected: dict[str, tuple[str, SourceError]] = {}
        self._known: dict[str, tuple[int, str]] = {}  # from state.json: key -> (version, hash)
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batch: list[Resource] = []  # see Store.batch
        self._empty_settle = empty_settle
        self._monotonic = monotonic
        self._emptied: dict[str, float] = {}  # file -> when it was first read empty
        self._rescan_timer: asyncio.TimerHandle | None = None
        self._rescan_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the directory, then (if enabled) watch it; returns once the watcher is live."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._load_state()
        async with self._lock:
            self._sync_all()
            self._save_state()
        if self._watch_files:
            ready = asyncio.Event()
            self._task = asyncio.create_task(self._watch_loop(ready), name="dirstore-watch")
            await self._await_watcher(ready)
            async with self._lock:  # edits made before the watcher was live
                self._sync_all()

    async def rescan(self) -> None:
        """Read the whole directory again now (the watcher does on every change)."""
        async with self._lock:
            self._sync_all()

    def _rescan_later(self, delay: float) -> None:
        if self._rescan_timer is not None or self._stop.is_set():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return

        def fire() -> None:
            self._rescan_timer = None
            self._rescan_task = loop.create_task(self.rescan(), name="dirstore-rescan")

        self._rescan_timer = loop.call_later(delay, fire)

    async def close(self) -> None:
        self._stop.set()
        if self._rescan_timer is not None:
            self._rescan_timer.cancel()
        if self._rescan_task is not None:
            await asyncio.gather(self._rescan_task, return_exceptions=True)
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout=5)
            except TimeoutError:
                log.warning("file watcher did not stop in time")
            self._task = None
        await super().close()

    def errors(self) -> SourceErrors:
        return [err for _, (_, err) in sorted(self._rejected.items())]

    # -- API writes: check, validate, write atomically, then commit ------------------------
    async def create(self, obj: Resource) -> StoredObject:
        async with self._lock:
            rel = self._home(obj.key)
            self._sync_file(rel)
            self._check_create(obj)
            await self._write(rel, obj.key, obj)
            return self._objects[obj.key]

    async def update(
        self, obj: Resource, expected_version: int | str | None = None
    ) -> StoredObject:
        async with self._lock:
            self._sync_file(self._require(obj.key).source)
            current = self._check_update(obj, expected_version)
            await self._write(current.source, obj.key, obj)
            return self._objects[obj.key]

    async def delete(
        self, kind: str, namespace: str, name: str, expected_version: int | str | None = None
    ) -> StoredObject:
        key = (kind, namespace, name)
        async with self._lock:
            self._sync_file(self._require(key).source)
            current = self._require(key)
            check_version(current, expected_version)
            await self._write(current.source, key, None)
            # with the version the deletion took (as MemStore), so that /api/v1/sync on it
            # waits for the proxies to drop the object
            return dataclasses.replace(current, resource_version=self._version)

    @contextlib.contextmanager
    def batch(self, resources: Sequence[Resource]) -> Iterator[None]:
        self._batch = list(resources)
        try:
            yield
        finally:
            self._batch = []

    async def check_write(self, key: Key) -> None:
        """Conflict if the file holding ``key`` (or its home, for a new object) has a rejected
        hand edit, judged on the file as it is now (re-read, as a write would)."""
        async with self._lock:
            current = self._objects.get(key)
            rel = current.source if current is not None else self._home(key)
            if self._sync_file(rel):
                self._save_state()
            self._check_not_rejected(rel)

    def _home(self, key: Key) -> str:
        kind, namespace, name = key
        for segment in (namespace, name):
            if not _PATH_SEGMENT.match(segment):
                raise Invalid(f"{kind} {namespace}/{name}: not a valid name")
        return f"{kind.lower()}/{namespace}/{name}.yaml"

    def _check_not_rejected(self, rel: str) -> None:
        if rel in self._rejected:
            msg = self._rejected[rel][1].message
            raise Conflict(f"{rel} has an invalid edit on disk; fix or revert it first:\n{msg}")

    async def _write(self, rel: str, key: Key, obj: Resource | None) -> None:
        self._check_not_rejected(rel)
        path = self.root / rel
        try:
            text = read_file(path).decode("utf-8")
        except FileNotFoundError:
            text = ""
        except RefusedFile as exc:  # replaced since _sync_file read it
            raise Conflict(f"{rel}: {exc}") from exc
        replacement = None
        if obj is not None:
            replacement = yaml.safe_dump(canonical_content(obj), sort_keys=False)
        new_text = rewrite_document(text, lambda doc: _doc_key(doc) == key, replacement)
        if not new_text:
            await asyncio.to_thread(remove_file, path)
            self._drop_file(rel)
        else:
            # raises before anything is written; the rest of an apply counts as written
            resources = self._evaluate(rel, new_text, self._batch)
            data = new_text.encode()
            await asyncio.to_thread(atomic_write, path, data)
            self._accept(rel, _digest(data), resources)
        self._recheck_rejected()  # e.g. a hand-written route waiting for this policy's subset
        self._save_state()

    # -- reconciling memory with the directory ---------------------------------------------
    def _sync_all(self) -> None:
        on_disk = {str(rel) for rel in yaml_files(self.root)}
        changed = False
        for rel in sorted(set(self._files) - on_disk):
            self._drop_file(rel)
            changed = True
        for rel in set(self._rejected) - on_disk:
            del self._rejected[rel]
        for rel in sorted(on_disk):
            changed |= self._sync_file(rel)
        if changed:
            self._recheck_rejected()
            self._save_state()

    def _recheck_rejected(self) -> None:
        """Judge rejected files again after a change elsewhere: a rejection may have been
        caused by another file (a duplicate, a subset no policy defined yet)."""
        changed = True
        while changed and self._rejected:
            changed = any([self._sync_file(rel, force=True) for rel in sorted(self._rejected)])

    def _sync_file(self, rel: str, force: bool = False) -> bool:
        """Bring the objects of one file in line with its content; True if anything changed."""
        try:
            data = read_file(self.root / rel)
        except FileNotFoundError:
            self._rejected.pop(rel, None)
            self._emptied.pop(rel, None)
            return self._drop_file(rel)
        except RefusedFile as exc:  # reported once (not on every rescan); last good stays
            marker = f"refused: {exc}"
            if rel not in self._rejected or self._rejected[rel][0] != marker:
                self._reject(rel, marker, f"{rel}: {exc}")
            return False
        except OSError as exc:
            log.warning("cannot read %s: %s", rel, exc)
            return False
        digest = _digest(data)
        if rel in self._files and self._files[rel].digest == digest:
            self._emptied.pop(rel, None)  # emptied, then written back as it was
            if rel in self._rejected:  # a bad edit undone: the live objects are this content
                self._clear_rejection(rel)
                return True
            return False
        if not force and rel in self._rejected and self._rejected[rel][0] == digest:
            return False
        try:
            resources = self._evaluate(rel, data.decode("utf-8"))
        except (Invalid, UnicodeDecodeError) as exc:
            self._reject(rel, digest, str(exc))
            return False
        except Exception as exc:  # a checker bug must cost this file, not the whole watcher
            log.exception("unexpected error checking %s", rel)
            self._reject(rel, digest, f"{rel}: could not be checked (a bug; the control "
                                      f"plane's log has the details): {exc!r}")
            return False
        if not resources and rel in self._files and self._files[rel].keys:
            now = self._monotonic()
            first = self._emptied.setdefault(rel, now)
            if now - first < self._empty_settle:  # maybe mid-write: look again, then believe it
                self._rescan_later(first + self._empty_settle - now)
                return False
        self._emptied.pop(rel, None)
        self._accept(rel, digest, resources)
        return True

    def _evaluate(self, rel: str, text: str, batch: list[Resource] | None = None
                  ) -> list[Resource]:
        """Parse and check a file's new content against the rest of the store, as it will be
        once ``batch`` (the other documents of the same apply) is written; raise Invalid."""
        try:
            resources = load_documents(text, rel)
        except ValidationError as exc:
            raise Invalid(str(exc), exc) from exc
        except yaml.YAMLError as exc:
            raise Invalid(f"{rel}: {exc}", exc) from exc
        problems: list[str] = []
        seen: set[Key] = set()
        for index, res in enumerate(resources, start=1):
            owner = self._objects[res.key].source if res.key in self._objects else rel
            if res.key in seen or owner != rel:
                where = "earlier in this file" if res.key in seen else f"in {owner}"
                problems.append(f"{rel} doc {index}: {res.kind} {res.namespace}/{res.name} "
                                f"is already defined {where}")
            seen.add(res.key)
        if not problems:
            old = set(self._files[rel].keys) if rel in self._files else set()
            current = [o.resource for o in self._objects.values()]
            rest_of_batch = [r for r in batch or () if r.key not in seen]
            candidate = overlay(overlay(current, rest_of_batch, set()), resources, old - seen)
            problems = [str(issue) for issue in new_issues(current, candidate)]
        if problems:
            raise Invalid("\n".join(problems))
        return resources

    def _accept(self, rel: str, digest: str, resources: list[Resource]) -> None:
        old = set(self._files[rel].keys) if rel in self._files else set()
        for res in resources:
            current = self._objects.get(res.key)
            if current is None:
                self._commit(res, rel, self._remembered_version(res))
            elif not content_equal(current.resource, res):
                self._commit(res, rel)
            self._set_accepted(res.key, None)
        for key in old - {res.key for res in resources}:
            self._commit_delete(key)
        self._files[rel] = _FileState(digest, tuple(res.key for res in resources))
        if rel in self._rejected:
            self._clear_rejection(rel)

    def _clear_rejection(self, rel: str) -> None:
        del self._rejected[rel]
        for key in self._files[rel].keys:
            self._set_accepted(key, None)
        log.info("%s is valid again and accepted", rel)

    def _reject(self, rel: str, digest: str, message: str) -> None:
        keys = self._files[rel].keys if rel in self._files else ()
        self._rejected[rel] = (digest, SourceError(rel, message, keys))
        log.warning("rejected %s; its last good version stays live:\n%s", rel, message)
        for key in keys:
            self._set_accepted(key, message)

    def _drop_file(self, rel: str) -> bool:
        state = self._files.pop(rel, None)
        for key in state.keys if state else ():
            self._commit_delete(key)
        return state is not None

    def _set_accepted(self, key: Key, error: str | None) -> None:
        status: dict[str, Any] = dict(self._status.get(key, {}))
        conditions = list(status.get("conditions", []))
        previous = next((c for c in conditions if c.get("type") == "Accepted"), None)
        if error is None and previous is None:
            return  # only a recovery from a rejection is worth a condition
        flag = "True" if error is None else "False"
        since = datetime.fromtimestamp(self._clock(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        if previous is not None and previous.get("status") == flag:
            since = previous.get("lastTransitionTime", since)
        condition = {"type": "Accepted", "status": flag,
                     "reason": "Valid" if error is None else "Invalid",
                     "message": error or "", "lastTransitionTime": since}
        status["conditions"] = [c for c in conditions if c is not previous] + [condition]
        self._status[key] = status
        if key in self._objects:  # `get -w` shows a rejected hand edit (status watches only)
            self._hub.publish(Event(EventType.MODIFIED, self._objects[key], status_only=True))

    # -- persisted versions ----------------------------------------------------------------
    def _remembered_version(self, res: Resource) -> int | None:
        """The pre-restart version of an object whose content did not change, else None."""
        known = self._known.pop("/".join(res.key), None)
        return known[0] if known is not None and known[1] == _content_hash(res) else None

    def _load_state(self) -> None:
        try:
            state = json.loads(self._state_file.read_text(encoding="utf-8"))
            self._version = max(self._version, int(state["version"]))
            self._known = {k: (int(v[0]), str(v[1])) for k, v in state["objects"].items()}
        except FileNotFoundError:
            pass
        except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
            log.warning("ignoring unreadable %s: %s", self._state_file, exc)

    def _save_state(self) -> None:
        objects = {"/".join(k): [o.resource_version, _content_hash(o.resource)]
                   for k, o in self._objects.items()}
        data = json.dumps({"version": self._version, "objects": objects}, sort_keys=True)
        atomic_write(self._state_file, data.encode(), mode=0o600)

    # -- the file watcher ------------------------------------------------------------------
    def _relevant(self, change: watchfiles.Change, path: str) -> bool:
        """Visible paths, the probe, and Kubernetes' atomic-writer entries: a ConfigMap or
        Secret volume updates by re-pointing its ``..data`` symlink to a new ``..<timestamp>``
        directory, and every visible file is a symlink through it, so only hidden ``..``
        names change when the content does."""
        rel = Path(path).relative_to(self.root) if path.startswith(str(self.root)) else Path(path)
        return (str(rel) == _PROBE or not is_hidden(rel)
                or any(part.startswith("..") for part in rel.parts))

    async def _watch_loop(self, ready: asyncio.Event) -> None:
        try:
            async for changes in watchfiles.awatch(
                self.root, watch_filter=self._relevant, debounce=self._debounce_ms,
                step=50, stop_event=self._stop, ignore_permission_denied=True,
            ):
                if any(Path(p).name == _PROBE for _, p in changes):
                    ready.set()
                async with self._lock:
                    try:
                        self._sync_all()
                    except Exception:  # keep watching: the next change rescans everything
                        log.exception("rescan of %s failed; retrying on the next change",
                                      self.root)
        except Exception:
            log.exception("file watcher failed; hand edits are no longer picked up")

    async def _await_watcher(self, ready: asyncio.Event, timeout: float = 10.0) -> None:
        """Touch a probe file until the watcher reports it: proof that it is watching."""
        probe = self.root / _PROBE
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready.is_set() and loop.time() < deadline:
            probe.write_text(str(loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ready.wait(), 0.2)
        probe.unlink(missing_ok=True)
        if not ready.is_set():
            log.warning("file watcher not confirmed live after %.0fs", timeout)

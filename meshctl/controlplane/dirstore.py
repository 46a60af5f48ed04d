"""The default Store: a directory of YAML files (GitOps-friendly) whose hand edits go live.

Layout. Objects written through the API go to ``<root>/<kind-lowercase>/<namespace>/<name>.yaml``;
any other visible ``*.yaml``/``*.yml`` under the root (multi-document files too) is loaded as
well (symlinked files and directories followed; a directory reached twice is walked once),
and an API update rewrites the object's document in whichever file holds it, keeping the
other documents' text and comments. Dot-files and dot-directories are ignored, except that a
change under a ``..`` name (a Kubernetes ConfigMap volume's ``..data`` symlink swap) triggers a
rescan of the visible files, which are symlinks through it.

Hand edits. A watcher (``watchfiles``) rescans on change. A file is accepted or rejected as a
whole: a YAML or schema error, text that is not UTF-8, a key already defined in a file whose
objects stay live, or a cross-document issue the change introduces (``validate_set``) rejects
it. The files changed since the last scan are judged together (``dirjudge``), so a resource
moved from one file to another in one step (a git checkout) goes live; files rejected for
reasons of other files are judged again whenever anything changes. A rejected file's last
good objects stay live, watchers see nothing, the error is logged, listed by ``errors()`` and
written into each of its objects' ``status.conditions`` (``type: Accepted, status:
"False"``). A name that is not a regular file (a FIFO would block the event loop forever) or
a file over 1 MiB (the API's body limit) is rejected the same way, reported once, and never
read past the limit; so is a file that cannot be read (permission denied, a symlink loop),
and the known files of a directory that cannot be listed are kept and read as they can be
(such a directory has not lost its files).
Deleting a file deletes its objects, unless another file takes them over in the same change
(a file renamed, as `git mv` does): they move, keeping their version and status. A file that
still exists but now holds no document, where it held some, is taken at its word only if it
still holds none ``empty_settle`` seconds later: an editor that truncates a file and then
writes it leaves it empty for a moment, and read then, every object of the file would be
deleted (a Route's traffic spread over every subset) until the write.

State. ``<state-dir>/state.json`` (default ``<root>/.ami/``, mode 0600, written atomically
after every change) keeps the resourceVersion counter, per object its version and content
hash, and per file its last good content (digest and objects). At start those last good
objects go live again before the directory is read, and the directory is then a change like
any other: a file that became invalid while the control plane was down is rejected and keeps
its last good version (said so in its error), as it would have, had the control plane been
running; a file that is invalid with no good version on record has nothing live.

resourceVersion. One integer counter for the whole store; every change takes the next value.
After a restart unchanged objects keep their version, changed ones get a new one, and a client
holding a pre-restart version of a changed object gets a Conflict. An object moved to another
file with the same content keeps its version. Status is observed state and lives in memory
only (the control plane recomputes it).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import watchfiles
import yaml

from meshctl.api.errors import ValidationError
from meshctl.api.resources import Resource, load_documents, parse_document
from meshctl.controlplane.dirfiles import (
    RefusedFile,
    atomic_write,
    is_hidden,
    read_file,
    remove_file,
    rewrite_document,
    split_documents,
    yaml_files,
)
from meshctl.controlplane.dirjudge import judge
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
)
from meshctl.controlplane.translated import origin_of

log = logging.getLogger(__name__)
_PATH_SEGMENT = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_PROBE = ".ami-watch-probe"


@dataclass(frozen=True, slots=True)
class _FileState:
    digest: str  # sha256 of the accepted bytes
    keys: tuple[Key, ...]


@dataclass(frozen=True, slots=True)
class _Change:
    """A file's new content, parsed, to be judged with the other changed files."""

    digest: str
    resources: list[Resource]


@dataclass(frozen=True, slots=True)
class _Rejection:
    digest: str  # of the rejected bytes, or a "refused: ..." marker
    error: SourceError
    alone: bool  # for what the file holds by itself: no change elsewhere makes it valid


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _not_utf8(rel: str, data: bytes, exc: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8: its line and column (in characters)."""
    line_start = data.rfind(b"\n", 0, exc.start) + 1
    line = data.count(b"\n", 0, exc.start) + 1
    column = len(data[line_start:exc.start].decode("utf-8", errors="replace")) + 1
    return (f"{rel}: line {line}, column {column}: byte 0x{data[exc.start]:02x} is not "
            f"UTF-8 ({exc.reason}); save the file as UTF-8")


def _gone(path: Path) -> bool:
    """Whether ``path`` is known not to exist (a directory that cannot be searched is not
    proof of that, unlike os.path.lexists says)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:  # permission denied: there may well be a file
        return False
    return False


def _under(rel: str, directory: Path) -> bool:
    """Whether the file ``rel`` is in ``directory`` (both relative to the root; ``.``: it)."""
    return directory == Path(".") or Path(rel).is_relative_to(directory)


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
        self._files: dict[str, _FileState] = {}  # the live (last good) content of each file
        self._rejected: dict[str, _Rejection] = {}
        self._known: dict[str, tuple[int, str]] = {}  # from state.json: key -> (version, hash)
        # from state.json: file -> (digest, [(doc number, object)]), its last good content
        self._saved: dict[str, tuple[str, list[tuple[int | None, Any]]]] = {}
        self._restored: set[str] = set()  # files whose live objects state.json restored
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batch: list[Resource] = []  # see Store.batch
        self._empty_settle = empty_settle
        self._monotonic = monotonic
        self._emptied: dict[str, float] = {}  # file -> when it was first read empty
        self._rescan_timer: asyncio.TimerHandle | None = None
        self._rescan_task: asyncio.Task[None] | None = None
        self._unlisted: list[Path] = []  # directories the last scan could not list

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the directory, then (if enabled) watch it; returns once the watcher is live."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._load_state()
        async with self._lock:
            self._restore()
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
        return [rejection.error for _, rejection in sorted(self._rejected.items())]

    # -- API writes: check, validate, write atomically, then commit ------------------------
    async def create(self, obj: Resource) -> StoredObject:
        async with self._lock:
            rel = self._home(obj.key)
            self._sync([rel])
            self._check_create(obj)
            await self._write(rel, obj.key, obj)
            return self._objects[obj.key]

    async def update(
        self, obj: Resource, expected_version: int | str | None = None
    ) -> StoredObject:
        async with self._lock:
            self._sync([self._require(obj.key).source])
            current = self._check_update(obj, expected_version)
            await self._write(current.source, obj.key, obj)
            return self._objects[obj.key]

    async def delete(
        self, kind: str, namespace: str, name: str, expected_version: int | str | None = None
    ) -> StoredObject:
        key = (kind, namespace, name)
        async with self._lock:
            self._sync([self._require(key).source])
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
            if self._sync([rel]):
                self._save_state()
            self._check_not_rejected(rel)
            if current is not None:
                try:
                    text = read_file(self.root / rel).decode("utf-8")
                except (OSError, RefusedFile, UnicodeDecodeError):
                    return  # (the write reports it)
                self._check_not_translated(rel, key, text)

    def _check_not_translated(self, rel: str, key: Key, text: str) -> None:
        """Conflict if ``key`` comes from an Istio document of ``rel`` (its translation): the
        API would append an Ami document beside it, or delete nothing."""
        current = self._objects.get(key)
        origin = origin_of(current.resource) if current is not None else None
        if origin is None or current is None or current.source != rel:
            return
        if any(_doc_key(yaml.safe_load(part)) == key for part in split_documents(text)):
            return  # (an Ami document carrying the annotation: written back as usual)
        kind, namespace, name = key
        raise Conflict(f"{kind} {namespace}/{name} is the translation of {origin} in {rel}, "
                       "Istio YAML in the config directory, which the API does not rewrite: "
                       "edit or delete that document in the file")

    def _home(self, key: Key) -> str:
        kind, namespace, name = key
        for segment in (namespace, name):
            if not _PATH_SEGMENT.match(segment):
                raise Invalid(f"{kind} {namespace}/{name}: not a valid name")
        return f"{kind.lower()}/{namespace}/{name}.yaml"

    def _check_not_rejected(self, rel: str) -> None:
        if rel in self._rejected:
            msg = self._rejected[rel].error.message
            raise Conflict(f"{rel} has an invalid edit on disk; fix or revert it first:\n{msg}")

    async def _write(self, rel: str, key: Key, obj: Resource | None) -> None:
        self._check_not_rejected(rel)
        path = self.root / rel
        try:
            text = read_file(path).decode("utf-8")
        except FileNotFoundError:
            text = ""
        except (RefusedFile, UnicodeDecodeError) as exc:  # replaced since _sync read it
            raise Conflict(f"{rel}: {exc}") from exc
        self._check_not_translated(rel, key, text)
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
            self._accept({rel: _Change(_digest(data), resources)})
        self._sync((), changed=True)  # e.g. a hand-written route waiting for this subset
        self._save_state()

    # -- reconciling memory with the directory ---------------------------------------------
    def _sync_all(self) -> None:
        unlisted: list[Path] = []
        on_disk = {str(rel) for rel in yaml_files(self.root, unlisted)}
        # A directory that cannot be listed (permission denied) has not lost its files: those
        # known stay, read as they can be (unreadable: rejected, their last good version live)
        on_disk |= {rel for rel in [*self._files, *self._rejected]
                    if any(_under(rel, directory) for directory in unlisted)}
        if unlisted != self._unlisted:
            for directory in unlisted:
                log.warning("cannot list %s under %s: the files known in it are kept, new ones "
                            "are not seen until it can be listed", directory, self.root)
            self._unlisted = unlisted
        for rel in set(self._rejected) - on_disk:
            del self._rejected[rel]
        if self._sync(sorted(on_disk), gone=sorted(set(self._files) - on_disk)):
            self._save_state()

    def _sync(self, rels: Iterable[str], changed: bool = False,
              gone: Sequence[str] = ()) -> bool:
        """Bring the files ``rels`` in line with their content, judging the changed ones
        together (``dirjudge``), and drop the files ``gone`` from the directory; then, if
        anything changed, judge the files rejected for reasons of other files again against
        the new state, until no more go live. True if anything changed."""
        changes: dict[str, _Change] = {}
        for rel in rels:
            read = self._read(rel)
            if isinstance(read, _Change):
                changes[rel] = read
            else:
                changed |= read
        again = changed or bool(changes) or bool(gone)
        while again:
            for rel in sorted(self._rejected):
                if rel not in changes and not self._rejected[rel].alone:
                    read = self._read(rel, again=True)
                    if isinstance(read, _Change):
                        changes[rel] = read
                    else:
                        changed |= read
            # each round that goes on made a rejected file live: the rounds end
            again = bool(changes) and self._judge_and_apply(changes, gone)
            # Dropped only now: an object a gone file held that a changed file holds now (a
            # file renamed, as `git mv` does) was moved, not deleted and added again.
            for rel in gone:
                again |= self._drop_file(rel)
            gone = ()
            changed |= again
            changes = {}
        return changed

    def _read(self, rel: str, again: bool = False) -> _Change | bool:
        """One file's new content to judge; else True if reading it changed the store (it
        is gone, or back to its live bytes after a rejected edit), False if not. A file
        that cannot be read or parsed is rejected here, whatever the rest of the directory
        holds. ``again``: also a rejected file whose bytes did not change."""
        try:
            data = read_file(self.root / rel)
        except FileNotFoundError:
            self._rejected.pop(rel, None)
            self._emptied.pop(rel, None)
            return self._drop_file(rel)
        except (RefusedFile, OSError) as exc:  # reported once (not on every rescan); last
            # good stays. OSError: permission denied, a symlink loop: listed with the errors,
            # as a file that does not parse, not only logged (on every rescan) while nothing
            # of it is live
            text = str(exc) if isinstance(exc, RefusedFile) else \
                f"cannot be read: {exc.strerror or exc}"
            marker = f"refused: {text}"
            if rel not in self._rejected or self._rejected[rel].digest != marker:
                self._reject(rel, marker, f"{rel}: {text}", alone=True)
            return False
        digest = _digest(data)
        if rel in self._files and self._files[rel].digest == digest:
            self._emptied.pop(rel, None)  # emptied, then written back as it was
            self._restored.discard(rel)  # what is live is what the file holds
            if rel in self._rejected:  # a bad edit undone: the live objects are this content
                self._clear_rejection(rel)
                return True
            return False
        if not again and rel in self._rejected and self._rejected[rel].digest == digest:
            return False
        try:
            resources = self._parse(rel, data)
        except Invalid as exc:
            self._reject(rel, digest, str(exc), alone=True)
            return False
        except Exception as exc:  # a checker bug must cost this file, not the whole watcher
            log.exception("unexpected error checking %s", rel)
            self._reject(rel, digest, f"{rel}: could not be checked (a bug; the control "
                                      f"plane's log has the details): {exc!r}", alone=True)
            return False
        if not resources and rel in self._files and self._files[rel].keys:
            now = self._monotonic()
            first = self._emptied.setdefault(rel, now)
            if now - first < self._empty_settle:  # maybe mid-write: look again, then believe it
                self._rescan_later(first + self._empty_settle - now)
                return False
        self._emptied.pop(rel, None)
        return _Change(digest, resources)

    def _parse(self, rel: str, data: bytes) -> list[Resource]:
        """A file's documents, each checked on its own; Invalid naming the file."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Invalid(_not_utf8(rel, data, exc)) from exc
        try:
            return load_documents(text, rel)
        except ValidationError as exc:
            raise Invalid(str(exc), exc) from exc
        except yaml.YAMLError as exc:
            raise Invalid(f"{rel}: {exc}", exc) from exc

    def _judge_and_apply(self, changes: dict[str, _Change], gone: Sequence[str] = ()) -> bool:
        """Judge the changed files together, as if the files ``gone`` were dropped already;
        make live those that can go live together and reject the others. True if any went
        live."""
        bug = False
        live = self._objects if not gone else {
            k: o for k, o in self._objects.items() if o.source not in gone}
        try:
            errors = judge(live, {rel: c.resources for rel, c in changes.items()},
                           self._rejected)
        except Exception as exc:  # a checker bug must cost these files, not the watcher
            log.exception("unexpected error checking %s", ", ".join(sorted(changes)))
            bug = True  # judged again only once changed, not on every change elsewhere
            errors = {rel: f"{rel}: could not be checked (a bug; the control plane's log has "
                           f"the details): {exc!r}" for rel in changes}
        accepted = {rel: c for rel, c in changes.items() if rel not in errors}
        self._accept(accepted)
        for rel, message in errors.items():
            self._reject(rel, changes[rel].digest, message, alone=bug)
        return bool(accepted)

    def _evaluate(self, rel: str, text: str, batch: Sequence[Resource] = ()) -> list[Resource]:
        """Parse and check a file's new content against the rest of the store, as it will be
        once ``batch`` (the other documents of the same apply) is written; raise Invalid."""
        resources = self._parse(rel, text.encode())
        errors = judge(self._objects, {rel: resources}, self._rejected, batch)
        if errors:
            raise Invalid(errors[rel])
        return resources

    def _accept(self, accepted: Mapping[str, _Change]) -> None:
        """Make the new content of these files live, as one change: a key that moved from
        one of them to another keeps its version when its content is the same."""
        owners = {res.key for change in accepted.values() for res in change.resources}
        for rel in sorted(accepted):
            for key in self._files[rel].keys if rel in self._files else ():
                if key not in owners:
                    self._commit_delete(key)
        for rel, change in sorted(accepted.items()):
            for res in change.resources:
                current = self._objects.get(res.key)
                if current is None:
                    self._commit(res, rel, self._remembered_version(res))
                elif not content_equal(current.resource, res):
                    self._commit(res, rel)
                else:  # the same content (perhaps from another file or document): no event
                    self._objects[res.key] = dataclasses.replace(current, resource=res,
                                                                 source=rel)
                self._set_accepted(res.key, None)
            self._files[rel] = _FileState(change.digest,
                                          tuple(res.key for res in change.resources))
            self._restored.discard(rel)
            if rel in self._rejected:
                self._clear_rejection(rel)

    def _clear_rejection(self, rel: str) -> None:
        del self._rejected[rel]
        for key in self._files[rel].keys:
            self._set_accepted(key, None)
        log.info("%s is valid again and accepted", rel)

    def _reject(self, rel: str, digest: str, message: str, alone: bool) -> None:
        """Reject a file's content: its last good objects (if any) stay live. ``alone``: for
        what the file holds by itself (no change elsewhere can make it valid)."""
        keys = self._files[rel].keys if rel in self._files else ()
        if keys and rel in self._restored:
            message += (f"\n{rel}: its last good version, restored from {self._state_file} "
                        "at start, stays live")
        previous = self._rejected.get(rel)
        self._rejected[rel] = _Rejection(digest, SourceError(rel, message, keys), alone)
        if previous is not None and (previous.digest, previous.error.message) == (digest,
                                                                                  message):
            return  # judged again, with the same outcome: said already
        if not keys:
            log.warning("rejected %s; nothing of it is live:\n%s", rel, message)
        elif rel in self._restored:
            log.warning("rejected %s; its last good version (restored at start) stays live:"
                        "\n%s", rel, message)
        else:
            log.warning("rejected %s; its last good version stays live:\n%s", rel, message)
        for key in keys:
            self._set_accepted(key, message)

    def _drop_file(self, rel: str) -> bool:
        """Forget a file that is gone, deleting the objects it still holds (not those another
        file took over in the same change)."""
        state = self._files.pop(rel, None)
        self._restored.discard(rel)
        for key in state.keys if state else ():
            if key in self._objects and self._objects[key].source == rel:
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
            return
        except (OSError, ValueError, ArithmeticError, LookupError, TypeError,
                AttributeError) as exc:  # (ArithmeticError: a version of 1e400)
            self._set_aside("the objects' versions (they start again) and the files' last "
                            "good versions (a file invalid now has nothing live)", exc)
            return
        root = state.get("root")
        if root is not None and root != str(self.root):  # another config dir's (a shared
            # --state-dir): its files' last good versions are not this directory's
            log.warning("%s was written for the config dir %s, not %s: the files' last good "
                        "versions it holds are not restored", self._state_file, root, self.root)
            return
        try:  # absent in a state file of a version that kept no content
            self._saved = {
                str(rel): (str(entry["digest"]),
                           [(doc if isinstance(doc, int) else None, obj)
                            for doc, obj in entry["objects"]])
                for rel, entry in state.get("files", {}).items()}
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            self._set_aside("the files' last good versions (a file invalid now has nothing "
                            "live)", exc)

    def _set_aside(self, lost: str, exc: Exception) -> None:
        """Say what an unreadable state file costs, and keep a copy of it: it is rewritten
        as soon as the directory is read, and its owner may want it back."""
        aside = self._state_file.with_name(self._state_file.name + ".unreadable")
        try:
            shutil.copyfile(self._state_file, aside)
            kept = f"a copy is kept as {aside}"
        except OSError as copy_error:
            kept = f"no copy could be kept ({copy_error})"
        log.warning("%s cannot be read (%s): starting without %s; %s", self._state_file, exc,
                    lost, kept)

    def _restore(self) -> None:
        """Make the last good objects state.json recorded for each file live again, before
        the directory is read: a file that became invalid while the control plane was down
        keeps them, as it would have had it been running. A file gone since is not restored
        (deleting a file deletes its objects)."""
        for rel, (digest, docs) in sorted(self._saved.items()):
            if is_hidden(Path(rel)) or _gone(self.root / rel):
                continue
            try:
                resources = [parse_document(obj, rel, doc) for doc, obj in docs]
            except ValidationError as exc:  # e.g. recorded by a version with another schema
                log.warning("not restoring the last good version of %s recorded in %s: %s",
                            rel, self._state_file, exc)
                continue
            if any(res.key in self._objects for res in resources):
                log.warning("not restoring the last good version of %s recorded in %s: it "
                            "defines an object another file's recorded version defines",
                            rel, self._state_file)
                continue
            for res in resources:
                self._commit(res, rel, self._remembered_version(res))
            self._files[rel] = _FileState(digest, tuple(res.key for res in resources))
            self._restored.add(rel)
        self._saved = {}

    def _save_state(self) -> None:
        objects = {"/".join(k): [o.resource_version, _content_hash(o.resource)]
                   for k, o in self._objects.items()}
        files = {rel: {"digest": state.digest,
                       "objects": [[self._objects[k].resource.doc,
                                    canonical_content(self._objects[k].resource)]
                                   for k in state.keys]}
                 for rel, state in self._files.items()}
        data = json.dumps({"version": self._version, "objects": objects, "files": files,
                           "root": str(self.root)}, sort_keys=True)
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

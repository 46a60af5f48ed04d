"""Judging changed files of the watched config dir together (dirstore): which of them can go
live as one change, and why each of the others cannot.

A file is accepted or rejected as a whole, but files are judged as a set: a resource moved
from one file to another in one step (as a git checkout does) makes each file invalid against
the other's old version and the directory valid as a whole, so the set goes live. What stays
live is the objects of the files that did not change, and the last good objects of those that
are rejected; a change is judged against those:

1. a key defined twice in one changed file, or defined by a changed file while a file that
   keeps its objects live defines it, rejects the changed file;
2. a key two changed files define is kept by the file that holds it live now, else by the
   first of them (sorted); it rejects the others;
3. a cross-document issue the change introduces (``new_issues``: a route's unknown subset, a
   second policy for a host) rejects the changed file whose object has it; an issue of an
   object of an unchanged file rejects the changes without which it does not arise (all of
   them when no single one is to blame).

Each rejection leaves that file's last good objects live, so the rest is judged again, until
what remains can go live together.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Sequence

from meshctl.api.errors import Issue
from meshctl.api.resources import Resource, validate_set
from meshctl.controlplane.store import Key, StoredObject, overlay

Changes = Mapping[str, Sequence[Resource]]  # file -> the objects its new content defines


def judge(live: Mapping[Key, StoredObject], changes: Changes, rejected: Container[str] = (),
          batch: Sequence[Resource] = ()) -> dict[str, str]:
    """The files of ``changes`` that cannot go live, each with its error (one line per
    problem); the others can go live together.

    ``live``: the store's objects now, each with the file it comes from; a file not in
    ``changes`` keeps them. ``rejected``: files whose live objects are the last good version
    of a rejected edit (said so in a duplicate's message). ``batch``: other objects an API
    apply writes at the same time (judged as already written)."""
    pending = {rel: list(resources) for rel, resources in changes.items()}
    errors: dict[str, list[str]] = {}
    before = {str(issue) for issue in validate_set(o.resource for o in live.values())}
    while pending:
        found = (_duplicates(live, pending, rejected) or _contested(live, pending)
                 or _new_issues(live, pending, before, batch))
        if not found:
            break
        for rel, messages in found.items():
            errors.setdefault(rel, []).extend(messages)
            del pending[rel]
    return {rel: "\n".join(messages) for rel, messages in sorted(errors.items())}


def _where(resource: Resource, source: str) -> str:
    return source if resource.doc is None else f"{source} doc {resource.doc}"


def _duplicate(rel: str, res: Resource, where: str) -> str:
    """As ``apply`` reports a duplicate (validate_set), with where the first one is."""
    return str(Issue(rel, res.doc, "metadata.name",
                     f"duplicate {res.kind} {res.namespace}/{res.name}, already defined "
                     f"{where}"))


def _duplicates(live: Mapping[Key, StoredObject], pending: Mapping[str, list[Resource]],
                rejected: Container[str]) -> dict[str, list[str]]:
    """Keys defined twice in one file, or also by a file whose objects stay live."""
    found: dict[str, list[str]] = {}
    for rel, resources in sorted(pending.items()):
        seen: dict[Key, int | None] = {}
        for res in resources:
            other = live.get(res.key)
            if res.key in seen:
                doc = seen[res.key]
                where = "earlier in this file" + (f" (doc {doc})" if doc is not None else "")
            elif other is not None and other.source not in pending:
                where = f"in {_where(other.resource, other.source)}"
                if other.source in rejected:
                    where += (f" (its last good version, live while {other.source} is "
                              "rejected)")
            else:
                seen[res.key] = res.doc
                continue
            found.setdefault(rel, []).append(_duplicate(rel, res, where))
            seen.setdefault(res.key, res.doc)
    return found


def _contested(live: Mapping[Key, StoredObject], pending: Mapping[str, list[Resource]]
               ) -> dict[str, list[str]]:
    """Keys several changed files define: the file holding the key live keeps it, else the
    first file (sorted); the others are duplicates of it."""
    claims: dict[Key, dict[str, Resource]] = {}
    for rel in sorted(pending):
        for res in pending[rel]:
            claims.setdefault(res.key, {}).setdefault(rel, res)
    found: dict[str, list[str]] = {}
    for key, by_file in claims.items():
        if len(by_file) < 2:
            continue
        owner = live.get(key)
        keeper = owner.source if owner is not None and owner.source in by_file else \
            next(iter(by_file))
        for rel, res in by_file.items():
            if rel != keeper:
                found.setdefault(rel, []).append(
                    _duplicate(rel, res, f"in {_where(by_file[keeper], keeper)}"))
    return found


def _candidate(live: Mapping[Key, StoredObject], pending: Mapping[str, list[Resource]],
               batch: Sequence[Resource]) -> list[Resource]:
    """The store once ``pending`` (and ``batch``) are live. Objects that are live now come
    first, so that of two claims (a host's policy, the MeshConfig) the new one has the
    issue."""
    new = sorted((res for resources in pending.values() for res in resources),
                 key=lambda res: res.key not in live)
    keys = {res.key for res in new}
    kept = [o.resource for o in live.values() if o.source not in pending]
    return overlay(overlay(kept, [r for r in batch if r.key not in keys], set()), new, set())


def _new_issues(live: Mapping[Key, StoredObject], pending: Mapping[str, list[Resource]],
                before: set[str], batch: Sequence[Resource]) -> dict[str, list[str]]:
    """Cross-document issues the change introduces, by the changed file to blame."""
    issues = [i for i in validate_set(_candidate(live, pending, batch)) if str(i) not in before]
    found: dict[str, list[str]] = {}
    elsewhere: list[Issue] = []
    for issue in issues:
        if issue.source is not None and issue.source in pending:
            found.setdefault(issue.source, []).append(str(issue))
        else:
            elsewhere.append(issue)
    if not elsewhere:
        return found
    # An object of an unchanged file breaks (a route whose subset a changed policy dropped):
    # blame the changes without which it does not.
    without = {}
    if len(pending) > 1:
        without = {rel: {str(i) for i in validate_set(_candidate(
            live, {r: v for r, v in pending.items() if r != rel}, batch))} for rel in pending}
    for issue in elsewhere:
        culprits = [rel for rel in sorted(without) if str(issue) not in without[rel]]
        for rel in culprits or sorted(pending):
            found.setdefault(rel, []).append(str(issue))
    return found

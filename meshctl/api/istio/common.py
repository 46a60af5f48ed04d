"""What every Istio kind's translation shares: the result, its field-path map, refusals."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshctl.api import fields as F
from meshctl.api.errors import Issue, ValidationError
from meshctl.api.fields import Fields

AMI_VERSION = "ami.mesh/v1alpha1"
# Istio's root namespace: its policies are mesh-wide there, which Ami's are not
ROOT_NAMESPACE = "istio-system"
# the annotation naming the Istio document an object was translated from
TRANSLATED_FROM = "ami.mesh/translated-from"


@dataclass(slots=True)
class Translation:
    """One Ami document made from an Istio one, and where its fields came from.

    ``paths`` pairs an Ami field path (of ``doc``) with the Istio document's path it was
    written at, so that an error the Ami parser finds is reported on the user's own field.
    """

    doc: dict[str, Any]
    origin: str  # `virtualservice.networking.istio.io/reviews`
    paths: list[tuple[str, str]] = field(default_factory=list)

    def at(self, ami: str, istio: str) -> None:
        """Record that the Ami field ``ami`` (and what is under it) came from ``istio``."""
        self.paths.append((ami, istio))

    def locate(self, err: ValidationError) -> ValidationError:
        """``err`` (the Ami parser's) with each path the Istio document's."""
        return ValidationError(dataclasses.replace(i, path=istio_path(self.paths, i.path))
                               for i in err.issues)


def istio_path(paths: Iterable[tuple[str, str]], path: str) -> str:
    """The Istio document's path of the Ami field ``path`` (by its longest known prefix)."""
    best: tuple[str, str] | None = None
    for ami, istio in paths:
        if (path == ami or path.startswith((ami + ".", ami + "["))) and (
                best is None or len(ami) > len(best[0])):
            best = (ami, istio)
    if best is None:
        return path
    return best[1] + path[len(best[0]):]


def refuse(f: Fields, key: str, why: str) -> None:
    """Record ``key``, if present, as a field Ami cannot honour, and why."""
    if f.has(key):
        f.add(f.at(key), f"not supported by Ami: {why}")


def metadata(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The Istio document's metadata as it is (Ami checks it as its own)."""
    meta = doc.get("metadata")
    return dict(meta) if isinstance(meta, Mapping) else {}


def namespace_of(meta: Mapping[str, Any]) -> str:
    ns = meta.get("namespace")
    return ns if isinstance(ns, str) and ns else "default"


def ami_doc(kind: str, meta: Mapping[str, Any], spec: dict[str, Any],
            origin: str) -> dict[str, Any]:
    """An Ami document of ``kind``; its metadata the Istio one's, annotated with its origin."""
    out = dict(meta)
    notes = out.get("annotations")
    out["annotations"] = {**(dict(notes) if isinstance(notes, Mapping) else {}),
                          TRANSLATED_FROM: origin}
    if notes is not None and not isinstance(notes, Mapping):
        out["annotations"] = notes  # (Ami's metadata check says what is wrong with it)
    return {"apiVersion": AMI_VERSION, "kind": kind, "metadata": out, "spec": spec}


def not_root(f: Fields, meta: Mapping[str, Any], kind: str, instead: str) -> None:
    """Refuse a security kind in Istio's root namespace, where Istio makes it mesh-wide."""
    if meta.get("namespace") == ROOT_NAMESPACE:
        f.add("metadata.namespace", f"a {kind} in {ROOT_NAMESPACE}, Istio's root namespace, "
                                    f"is mesh-wide in Istio; Ami has no root namespace: "
                                    f"{instead}")


def service_selector(f: Fields, kind: str) -> dict[str, str] | None:
    """`selector.matchLabels: {app: NAME}` as Ami's `{service: NAME}` (None: no selector,
    or an empty matchLabels: the whole namespace, as in Istio)."""
    for key in ("targetRef", "targetRefs"):
        refuse(f, key, f"a {kind} selects workloads by selector.matchLabels {{app: NAME}} "
                       "(a Gateway API target is not supported)")
    if not f.has("selector"):
        return None
    sel = Fields(f.raw("selector"), f.at("selector")) if isinstance(
        f.raw("selector"), Mapping) else None
    if sel is None:
        f.add(f.at("selector"), f"expected a mapping, got {F.describe(f.raw('selector'))}")
        return None
    labels = sel.value("matchLabels", F.labels, {})
    where = sel.at("matchLabels")
    for key in sorted(set(labels) - {"app"}):
        sel.add(F.join(where, key), f"not supported by Ami: Ami's {kind} selects a "
                                    "whole service, named by its `app` label; other "
                                    "labels (versions) cannot be selected")
    _take_issues(f, sel)
    if "app" in labels:
        return {"service": labels["app"]}
    return None


def _take_issues(f: Fields, inner: Fields) -> None:
    try:
        inner.finish()
    except ValidationError as err:
        f.issues.extend(err.issues)


def nested(f: Fields, key: str) -> Fields | None:
    """A Fields for the mapping at ``key`` (None if absent or not a mapping: recorded)."""
    if not f.has(key):
        return None
    value = f.raw(key)
    if not isinstance(value, Mapping):
        f.add(f.at(key), f"expected a mapping, got {F.describe(value)}")
        return None
    return Fields(value, f.at(key))


def done(f: Fields, inner: Fields | None) -> None:
    """Finish ``inner``, its issues going to ``f``."""
    if inner is not None:
        _take_issues(f, inner)


def items(f: Fields, key: str) -> list[tuple[str, Any]]:
    """(path, item) of the list at ``key`` (none if absent or not a list: recorded)."""
    if not f.has(key):
        return []
    value = f.raw(key)
    if not isinstance(value, list):
        f.add(f.at(key), f"expected a list, got {F.describe(value)}")
        return []
    return [(f"{f.at(key)}[{i}]", item) for i, item in enumerate(value)]


def issue(path: str, message: str) -> Issue:
    return Issue(None, None, path, message)

"""Objects an earlier apply of an Istio document made that its new translation no longer makes."""

from __future__ import annotations

from meshctl.api.istio.common import TRANSLATED_FROM
from meshctl.api.resources import Resource
from meshctl.controlplane.store import Store, StoredObject


def origin_of(resource: Resource) -> str | None:
    """The Istio document ``resource`` was translated from (`virtualservice...istio.io/x`)."""
    origin = (resource.annotations or {}).get(TRANSLATED_FROM)
    return origin if isinstance(origin, str) else None


async def stale(store: Store, applied: list[Resource]) -> list[StoredObject]:
    """Stored objects translated from a document ``applied`` translates again (same origin,
    same namespace) that are not among ``applied``: a VirtualService's Route of a host it no
    longer lists, or named for the hosts it had (`reviews-ratings` once it has one host).

    Only documents translated in this apply count (``Resource.origin``), not an Ami document
    carrying the annotation (one Route saved by `meshctl get -o yaml` prunes nothing)."""
    origins = {(r.namespace, r.origin) for r in applied if r.origin is not None}
    if not origins:
        return []
    keys = {r.key for r in applied}
    return [obj for obj in await store.list() if obj.key not in keys
            and (obj.resource.namespace, origin_of(obj.resource)) in origins]

"""Which Sidecar scopes a proxy: one selecting it, else its namespace's, else none."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshctl.api.resources import Resource
from meshctl.api.sidecar import SidecarSpec


def sidecar_for(sidecars: Iterable[Resource], service: str, namespace: str,
                labels: Mapping[str, str], mode: str = "sidecar") -> Resource | None:
    """The Sidecar applying to a proxy: one of its namespace whose workloadSelector matches
    it (the first by name, should several: validation refuses only identical selectors),
    else its namespace's namespace-wide one; never one for a gateway (as in Istio)."""
    if mode == "gateway":
        return None
    wide = None
    for r in sorted(sidecars, key=lambda r: r.name):
        if r.namespace != namespace or not isinstance(r.spec, SidecarSpec):
            continue
        if r.spec.labels is None:
            wide = wide or r
        elif r.spec.selects(service, labels):
            return r
    return wide

"""A sidecar's labels as every workload selector sees them (PeerAuthentication, Sidecar,
Telemetry): the labels it registers, with ``app`` always its service, as on a Kubernetes pod
whose ``app`` label names its service. One rule, so one ``{app: reviews, version: v2}`` picks
the same sidecars whichever kind carries it."""

from __future__ import annotations

from collections.abc import Mapping


def workload_labels(service: str, labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` with ``app`` = ``service`` (a registered ``app`` label does not override it:
    the service is what identities, mTLS modes and routes are keyed by)."""
    return {**labels, "app": service}

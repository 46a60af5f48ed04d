"""The control plane's own ``/metrics``: its build, connected/synced/NACKing proxies (and their
versions), and reconcile totals.

It reads attributes the reconciler already keeps (``states``, ``revision``, ``counters``),
so adding a numeric field to ``ReconcileCounters`` (e.g. ``certificates_issued`` or
``ack_seconds_sum``/``ack_seconds_count``) exports it as ``ami_controlplane_<field>_total``
without touching this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from meshctl.api.build import PYTHON, VERSION
from meshctl.controlplane.versionapi import data_plane_versions

_HELP = {
    "passes": "Reconcile passes run.", "computed": "Snapshots computed.",
    "shared": "Snapshots not computed: the same as another proxy's in the pass (same inputs).",
    "pushed": "Snapshots pushed to proxies.", "unchanged": "Snapshots not pushed (unchanged).",
    "pushed_deltas": "Snapshots pushed as deltas (of the pushed).",
    "delta_fallbacks": "Deltas a proxy refused, sent again as full snapshots.",
    "acks": "Snapshots ACKed by proxies.", "nacks": "Snapshots rejected (NACKed) by proxies.",
    "errors": "Reconcile passes that failed.",
    "jwks_fetches": "RequestAuthentication jwksUri fetches.",
    "jwks_fetch_failures": "jwksUri fetches that failed (the last good keys stay in use).",
}


class ControlPlaneCollector(Collector):
    """Builds the families at scrape time from the live reconciler (no per-event cost)."""

    def __init__(self, reconciler: Any) -> None:
        self.reconciler = reconciler

    def collect(self) -> Iterator[Metric]:
        r = self.reconciler
        build = GaugeMetricFamily("ami_controlplane_build_info",
                                  "The control plane's Ami version and Python (always 1).",
                                  labels=["version", "python"])
        build.add_metric([VERSION, PYTHON], 1.0)
        yield build
        versions = GaugeMetricFamily("ami_controlplane_proxy_versions",
                                     "Connected proxies per Ami version they run (unknown: "
                                     "built before proxies reported it).", labels=["version"])
        for version, count in data_plane_versions(r.registry).items():
            versions.add_metric([version], float(count))
        yield versions
        states = list(r.states.values())
        gauges = (
            ("proxies_connected", "Proxies with an open config stream.",
             sum(1 for s in states if s.sender is not None)),
            ("proxies_synced", "Connected proxies running their latest snapshot.",
             sum(1 for s in states if s.sender is not None and s.synced)),
            ("proxies_nacked", "Proxies whose last snapshot was rejected.",
             sum(1 for s in states if s.nack)),
            ("store_revision", "Highest store resourceVersion reconciled.", r.revision),
        )
        for name, doc, value in gauges:
            g = GaugeMetricFamily(f"ami_controlplane_{name}", doc)
            g.add_metric([], float(value))
            yield g
        counters = r.counters
        ack = SummaryMetricFamily("ami_controlplane_push_ack_seconds",
                                  "Time from pushing a snapshot to the proxy's ACK.")
        ack.add_metric([], counters.ack_seconds_count, counters.ack_seconds_sum)
        yield ack
        ca = getattr(r, "certificates", None)  # the CertificateService, when serve() has one
        if ca is not None:
            for name, doc, value in (
                    ("certificates_issued", "Workload certificates issued.", ca.issued),
                    ("certificates_refused", "Certificate requests refused.", ca.refused)):
                c = CounterMetricFamily(f"ami_controlplane_{name}", doc)
                c.add_metric([], float(value))
                yield c
        pushed = CounterMetricFamily("ami_controlplane_pushed_bytes",
                                     "ConfigMessage bytes pushed to proxies, by kind: full "
                                     "snapshots or deltas.", labels=["kind"])
        pushed.add_metric(["full"], float(counters.pushed_bytes_full))
        pushed.add_metric(["delta"], float(counters.pushed_bytes_delta))
        yield pushed
        for f in dataclasses.fields(counters):
            value = getattr(counters, f.name)
            if f.name.startswith(("ack_seconds", "pushed_bytes_")):
                continue  # exported as the summary and the family above
            if isinstance(value, int | float):
                c = CounterMetricFamily(f"ami_controlplane_{f.name}",
                                        _HELP.get(f.name, f.name.replace("_", " ") + "."))
                c.add_metric([], float(value))
                yield c


def metrics_routes(reconciler: Any) -> list[web.RouteDef]:
    """``GET /metrics`` for the control plane's API app."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ControlPlaneCollector(reconciler))

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    return [web.get("/metrics", metrics)]

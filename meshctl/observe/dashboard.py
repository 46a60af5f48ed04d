"""The JSON the dashboard polls: graph, per-service series, route splits, canaries, proxies,
counters."""

from __future__ import annotations

from typing import Any

from meshctl.api.canary import INITIALIZING, CanarySpec
from meshctl.controlplane.errors import NotFound
from meshctl.controlplane.store import Store
from meshctl.observe.scraper import Scraper

POLICY_COUNTERS = ("ami_outlier_ejections", "ami_outlier_panics", "ami_rate_limited",
                   "ami_circuit_breaker_overflow", "ami_retries", "ami_authorization_denied")


async def route_splits(store: Store) -> list[dict[str, Any]]:
    """Each Route's default (last) rule as ``[{subset, weight}]``, e.g. reviews v1 99 / v2 1."""
    out: list[dict[str, Any]] = []
    for stored in await store.list("Route"):
        doc = stored.to_dict()
        spec = doc.get("spec", {})
        rules = spec.get("rules") or []
        if not rules:
            continue
        backends = rules[-1].get("backends") or []
        out.append({"name": doc["metadata"]["name"], "host": spec.get("host"),
                    "resourceVersion": doc["metadata"].get("resourceVersion"),
                    "split": [{"subset": b.get("subset") or b.get("service") or "all",
                               "weight": b.get("weight", 100 if len(backends) == 1 else 0)}
                              for b in backends]})
    return out


EVENTS_SHOWN = 5


async def canaries(store: Store) -> list[dict[str, Any]]:
    """Each Canary as its panel draws it: subsets, weight, phase, last analysis against the
    thresholds (maxP99Ms None: latency not judged), its webhooks' last answers, the last
    events."""
    out: list[dict[str, Any]] = []
    for stored in await store.list("Canary"):
        spec = stored.resource.spec
        assert isinstance(spec, CanarySpec)
        try:
            status = await store.status(stored.key)
        except NotFound:  # deleted since the list
            continue
        t = spec.thresholds
        out.append({"name": stored.resource.name, "namespace": stored.resource.namespace,
                    "service": spec.service, "stable": spec.stable, "canary": spec.canary,
                    "stepWeight": spec.step_weight, "maxWeight": spec.max_weight,
                    "interval": spec.interval,
                    "weight": status.get("canaryWeight", 0),
                    "phase": status.get("phase", INITIALIZING),
                    "message": status.get("message", ""),
                    "failedChecks": status.get("failedChecks", 0), "failures": spec.failures,
                    "thresholds": {"minSuccessRate": t.min_success_rate,
                                   "maxP99Ms": t.max_p99_ms, "minRequests": t.min_requests},
                    "lastAnalysis": status.get("lastAnalysis"),
                    "webhooks": list(status.get("webhooks", [])),
                    "events": list(status.get("events", []))[-EVENTS_SHOWN:]})
    return out


def counters_by_service(scraper: Scraper) -> dict[str, dict[str, float]]:
    """Policy counters (ejections, rate-limit hits, ...) per service they were about: the
    metrics' ``destination_service`` label, summed over every proxy that counted them (the
    retries and ejections a caller's sidecar made towards reviews are reviews' events). A
    counter without that label is the reporting proxy's own service's."""
    out: dict[str, dict[str, float]] = {}

    def row(service: str) -> dict[str, float]:
        return out.setdefault(service, dict.fromkeys(POLICY_COUNTERS, 0.0))

    for p in scraper.proxies:
        scrape = scraper.window.latest(str(p["name"]))
        if scrape is None:
            continue
        own = row(str(p.get("service", "?")))
        for name in POLICY_COUNTERS:
            labelled = 0.0
            for dst, counts in scrape.by_service.items():
                if name in counts:
                    row(dst)[name] += counts[name]
                    labelled += counts[name]
            own[name] += scrape.counters.get(name, 0.0) - labelled
    return out


async def dashboard_state(scraper: Scraper, store: Store, now: float, window: float,
                          span: float = 300.0) -> dict[str, Any]:
    stats = scraper.window.stat(now, window)
    services = sorted({r.service for r in stats} | {str(p.get("service")) for p in
                                                    scraper.proxies if p.get("service")})
    step = max(scraper.interval, span / 60)
    return {
        "time": now, "window": window,
        "nodes": [r.as_json() for r in stats],
        "edges": [e.as_json() for e in scraper.window.edges(now, window)],
        "services": services,
        # per service a point every seriesStep s over the last seriesSpan s, at its time "t"
        "series": scraper.window.timelines(now, span, step),
        "seriesSpan": span, "seriesStep": step,
        "routes": await route_splits(store),
        "canaries": await canaries(store),
        "proxies": scraper.proxies,
        "scrapeErrors": scraper.errors,
        "counters": counters_by_service(scraper),
    }

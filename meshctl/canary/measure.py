"""A canary's Measurement from the control plane's stat rows (``/api/v1/stat``'s body), for
``meshctl canary`` over HTTP and the Canary controller in process alike."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshctl.api.hostnames import service_of
from meshctl.canary.analysis import Measurement

# A rate needs two scrapes inside its window; 2.5 scrape intervals always holds two.
SCRAPES_PER_WINDOW = 2.5


def analysis_window(interval: float, scrape_interval: float) -> float:
    """The metrics window for one analysis: the interval, widened to hold two scrapes."""
    return max(interval, SCRAPES_PER_WINDOW * scrape_interval)


def version_label(subsets: Iterable[Mapping[str, Any]], subset: str) -> str:
    """The ``version`` label that selects ``subset`` (what metrics are keyed by); the subset's
    name when its labels do not say."""
    for s in subsets:
        if s.get("name") == subset:
            return str((s.get("labels") or {}).get("version", subset))
    return subset


def service_labels(service: str, namespace: str) -> tuple[str, str]:
    """The ``destination_service`` spellings of ``service``: the bare name, or name.namespace
    while several namespaces have a service of that name (meshctl.controlplane.names)."""
    name = service_of(service, namespace)
    bare = name[0] if name else service
    return (f"{bare}.{namespace}", bare)


def measurement(rows: Iterable[Mapping[str, Any]], window: float, labels: Iterable[str],
                version: str) -> Measurement:
    """The canary's row of the stat ``rows`` over ``window`` seconds as a Measurement."""
    by_key = {(r["service"], r["version"]): r for r in rows}
    row = next((by_key[(label, version)] for label in labels if (label, version) in by_key),
               None)
    if row is None:  # no request reached the canary in the window
        return Measurement(0.0, None, None)
    # requests = rate x window, as Prometheus' increase()
    return Measurement(float(row["rps"]) * window, row["successRate"], row["p99"])

"""Parse one sidecar's Prometheus exposition into the request series the aggregations need."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

# Index of each label in a series key; the order of proxy.metrics.REQUEST_LABELS.
REPORTER, SRC, SRC_VER, DST, DST_WL, DST_VER, CODE, FLAGS, SECURITY, GRPC = range(10)
LABELS = ("reporter", "source_workload", "source_version", "destination_service",
          "destination_workload", "destination_version", "response_code", "response_flags",
          "connection_security_policy", "grpc_response_status")
Key = tuple[str, ...]
START_TIME = "ami_proxy_process_start_time_seconds"  # prometheus_client's ProcessCollector
Buckets = tuple[tuple[float, float], ...]  # (upper bound, cumulative count), +Inf last


@dataclass(frozen=True, slots=True)
class Scrape:
    """One scrape of one proxy: request counts and latency buckets per label set."""

    time: float
    requests: dict[Key, float] = field(default_factory=dict)
    buckets: dict[Key, Buckets] = field(default_factory=dict)
    counters: dict[str, float] = field(default_factory=dict)  # other ami_* counters, summed
    # the proxy process' start (POSIX seconds), when it exports it: a change is a restart
    start_time: float | None = None
    # the same counters per destination_service label, for those that have one
    by_service: dict[str, dict[str, float]] = field(default_factory=dict)


def parse_scrape(text: str, time: float) -> Scrape:
    """Read ``ami_requests_total``, the duration histogram, the policy counters and the
    process start time."""
    requests: dict[Key, float] = {}
    raw_buckets: dict[Key, list[tuple[float, float]]] = {}
    counters: dict[str, float] = {}
    by_service: dict[str, dict[str, float]] = {}
    start_time: float | None = None
    for family in text_string_to_metric_families(text):
        if family.name == "ami_requests":
            for s in family.samples:
                if s.name == "ami_requests_total":
                    requests[_key(s.labels)] = s.value
        elif family.name == "ami_request_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"]) * 1000.0  # the golden metrics work in ms
                    raw_buckets.setdefault(_key(s.labels), []).append((le, s.value))
        elif family.name == START_TIME:
            start_time = next((s.value for s in family.samples), None)
        elif family.type == "counter" and family.name.startswith("ami_"):
            counters[family.name] = sum(s.value for s in family.samples
                                        if s.name.endswith("_total"))
            for s in family.samples:
                dst = s.labels.get("destination_service")
                if dst is not None and s.name.endswith("_total"):
                    per = by_service.setdefault(dst, {})
                    per[family.name] = per.get(family.name, 0.0) + s.value
    buckets = {k: tuple(sorted(v)) for k, v in raw_buckets.items()}
    return Scrape(time, requests, buckets, counters, start_time, by_service)


def _key(labels: dict[str, str]) -> Key:
    return tuple(labels.get(name, "") for name in LABELS)

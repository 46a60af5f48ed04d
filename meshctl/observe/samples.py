"""Parse one sidecar's Prometheus exposition into the request and TCP series the aggregations
need."""

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
# A TCP series key: the request key's first six labels (same indices: REPORTER ... DST_VER),
# then connection_security_policy; response_flags is summed away, since a connection is
# counted opened and closed under different flags when it fails after opening.
TCP_LABELS = (*LABELS[:6], "connection_security_policy")
TCP_SECURITY = 6
# The ami_tcp_* counters, in the order of a TcpCounts tuple.
TCP_COUNTERS = ("ami_tcp_connections_opened", "ami_tcp_connections_closed",
                "ami_tcp_received_bytes", "ami_tcp_sent_bytes")
OPENED, CLOSED, RECEIVED, SENT = range(4)
TcpCounts = tuple[float, float, float, float]
NO_TCP: TcpCounts = (0.0, 0.0, 0.0, 0.0)
# A named rule's series key (ami_route_*, the order of proxy.routemetrics.ROUTE_LABELS).
ROUTE_LABELS = ("reporter", "destination_service", "route", "rule", "response_code",
                "grpc_response_status")
R_REPORTER, R_DST, R_ROUTE, R_RULE, R_CODE, R_GRPC = range(6)
# A policy's decision series key (ami_authz_decisions, proxy.authzstats.AUTHZ_LABELS).
AUTHZ_LABELS = ("destination_service", "policy", "action", "decision", "dry_run")
A_DST, A_POLICY, A_ACTION, A_DECISION, A_DRY_RUN = range(5)


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
    # the ami_tcp_* counters per TCP series (see TCP_LABELS), as (opened, closed, received,
    # sent)
    tcp: dict[Key, TcpCounts] = field(default_factory=dict)
    # the named rules' series (ami_route_*, keys of ROUTE_LABELS) as a scrape of their own,
    # so the request rate code reads them alike; None when the proxy exports none
    routes: Scrape | None = None
    # the policies' decision series (ami_authz_decisions, keys of AUTHZ_LABELS), likewise
    authz: Scrape | None = None

    def decisions(self) -> Scrape:
        """The policies' decision series (an empty scrape at the same time when none)."""
        return self.authz if self.authz is not None else Scrape(
            self.time, start_time=self.start_time)

    def rules(self) -> Scrape:
        """The named rules' series (an empty scrape at the same time when there are none)."""
        return self.routes if self.routes is not None else Scrape(
            self.time, start_time=self.start_time)


def parse_scrape(text: str, time: float) -> Scrape:
    """Read ``ami_requests_total``, the duration histogram, the ``ami_tcp_*`` counters, the
    policy counters, the named rules' series, the authorization policies' decisions and the
    process start time."""
    requests: dict[Key, float] = {}
    raw_buckets: dict[Key, list[tuple[float, float]]] = {}
    rule_requests: dict[Key, float] = {}
    rule_buckets: dict[Key, list[tuple[float, float]]] = {}
    decisions: dict[Key, float] = {}
    counters: dict[str, float] = {}
    by_service: dict[str, dict[str, float]] = {}
    start_time: float | None = None
    tcp: dict[Key, list[float]] = {}
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
        elif family.name == "ami_route_requests":
            for s in family.samples:
                if s.name == "ami_route_requests_total":
                    rule_requests[_key(s.labels, ROUTE_LABELS)] = s.value
        elif family.name == "ami_route_request_duration_seconds":
            for s in family.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"]) * 1000.0
                    rule_buckets.setdefault(_key(s.labels, ROUTE_LABELS), []).append(
                        (le, s.value))
        elif family.name == "ami_authz_decisions":
            for s in family.samples:
                if s.name == "ami_authz_decisions_total":
                    decisions[_key(s.labels, AUTHZ_LABELS)] = s.value
        elif family.name == START_TIME:
            start_time = next((s.value for s in family.samples), None)
        elif family.type == "counter" and family.name.startswith("ami_"):
            if family.name in TCP_COUNTERS:
                index = TCP_COUNTERS.index(family.name)
                for s in family.samples:
                    if s.name.endswith("_total"):
                        key = tuple(s.labels.get(name, "") for name in TCP_LABELS)
                        tcp.setdefault(key, [0.0, 0.0, 0.0, 0.0])[index] += s.value
            counters[family.name] = sum(s.value for s in family.samples
                                        if s.name.endswith("_total"))
            for s in family.samples:
                dst = s.labels.get("destination_service")
                if dst is not None and s.name.endswith("_total"):
                    per = by_service.setdefault(dst, {})
                    per[family.name] = per.get(family.name, 0.0) + s.value
    buckets = {k: tuple(sorted(v)) for k, v in raw_buckets.items()}
    routes = Scrape(time, rule_requests, {k: tuple(sorted(v)) for k, v in rule_buckets.items()},
                    start_time=start_time) if rule_requests else None
    authz = Scrape(time, decisions, start_time=start_time) if decisions else None
    return Scrape(time, requests, buckets, counters, start_time, by_service,
                  {k: (v[0], v[1], v[2], v[3]) for k, v in tcp.items()}, routes, authz)


def _key(labels: dict[str, str], names: tuple[str, ...] = LABELS) -> Key:
    return tuple(labels.get(name, "") for name in names)

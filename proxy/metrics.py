"""Request metrics with Istio's label names, kept as plain counters and exposed at scrape time.

Recording a request is a tuple key, a dict lookup and a few integer increments (a listener
keeps the series of its common requests by their objects: proxy.listener); the Prometheus
objects are built only when `/metrics` is scraped (a custom collector), which keeps the
per-request cost far below prometheus_client's labelled metrics.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from meshctl.api.build import PYTHON, VERSION
from proxy.authzstats import AuthzTable
from proxy.buckets import BYTES_BUCKETS, DURATION_BUCKETS_MS, DURATION_BUCKETS_S, cumulative
from proxy.routemetrics import RuleTable

REQUEST_LABELS = (
    "reporter", "source_workload", "source_version", "destination_service",
    "destination_workload", "destination_version", "response_code", "response_flags",
    "connection_security_policy", "grpc_response_status",
)


class _Series:
    __slots__ = ("count", "dur_buckets", "dur_sum", "req_buckets", "req_sum", "resp_buckets",
                 "resp_sum")

    def __init__(self) -> None:
        self.count = 0
        self.dur_sum = 0.0
        self.dur_buckets = [0] * (len(DURATION_BUCKETS_MS) + 1)
        self.req_sum = 0
        self.req_buckets = [0] * (len(BYTES_BUCKETS) + 1)
        self.resp_sum = 0
        self.resp_buckets = [0] * (len(BYTES_BUCKETS) + 1)

    def add(self, duration_ms: float, req_bytes: int, resp_bytes: int) -> None:
        """One request (a body of 0 bytes, a GET's, is bucket 0: no search)."""
        self.count += 1
        self.dur_sum += duration_ms
        self.dur_buckets[bisect_left(DURATION_BUCKETS_MS, duration_ms)] += 1
        if req_bytes:
            self.req_sum += req_bytes
            self.req_buckets[bisect_left(BYTES_BUCKETS, req_bytes)] += 1
        else:
            self.req_buckets[0] += 1
        if resp_bytes:
            self.resp_sum += resp_bytes
            self.resp_buckets[bisect_left(BYTES_BUCKETS, resp_bytes)] += 1
        else:
            self.resp_buckets[0] += 1


class RequestStats:
    """Counters for every (labels) combination seen; `record` is on the hot path."""

    __slots__ = ("_series", "authz", "connect_failures", "connections_active",
                 "connections_total", "counters", "rules", "tcp_live", "tcp_tap")

    def __init__(self) -> None:
        self._series: dict[tuple[object, ...], _Series] = {}
        self.connections_active: dict[str, int] = {}
        self.connections_total: dict[str, int] = {}
        self.connect_failures: dict[str, int] = {}
        # free-form labelled counters from policy layers: (name, labels-tuple) -> value
        self.counters: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        # open TCP connections (proxy.tcprelay.TcpSession): their bytes so far are added to
        # the counters at scrape time, so a long-lived connection does not show 0 till it ends
        self.tcp_live: set[Any] = set()
        # the tap's hook for each TCP connection that ends (proxy.tap), None while untapped
        self.tcp_tap: Any = None
        # named rules' series (ami_route_*), bound to decisions when a snapshot is compiled
        self.rules = RuleTable()
        # per-policy authorization decisions (ami_authz_decisions), bound to InboundPolicy
        self.authz = AuthzTable()

    def record(self, prefix: tuple[str, ...], version: str, status: int, flags: str,
               security: str, duration_ms: float, req_bytes: int, resp_bytes: int) -> None:
        self.series_for((prefix, version, status, flags, security)).add(
            duration_ms, req_bytes, resp_bytes)

    def record_grpc(self, prefix: tuple[str, ...], version: str, status: int, flags: str,
                    security: str, duration_ms: float, req_bytes: int, resp_bytes: int,
                    grpc: str) -> None:
        """A gRPC call: `grpc` is its grpc-status, Istio's `grpc_response_status` label
        (empty for every other request, whose key has no sixth part)."""
        self.series_for((prefix, version, status, flags, security, grpc)).add(
            duration_ms, req_bytes, resp_bytes)

    def series_for(self, key: tuple[object, ...]) -> _Series:
        """The series of a label key, made at its first request (and never dropped: a
        listener may keep it, see Listener.record)."""
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
        return s

    def inc(self, name: str, labels: tuple[tuple[str, str], ...] = (), value: float = 1) -> None:
        key = (name, labels)
        self.counters[key] = self.counters.get(key, 0) + value

    def series(self) -> Iterator[tuple[tuple[str, ...], _Series]]:
        for key, s in self._series.items():
            # prefix = (reporter, source_workload, source_version, destination_service,
            #           destination_workload)
            prefix, version, status, flags, security = key[:5]
            grpc = key[5] if len(key) > 5 else ""  # only gRPC calls' keys have it
            assert isinstance(prefix, tuple)
            yield (*prefix, str(version), str(status), str(flags), str(security), str(grpc)), s

    def totals(self) -> dict[str, float]:
        """A compact summary for /stats and the control plane."""
        total = sum(s.count for s in self._series.values())
        errors = sum(s.count for key, s in self._series.items()
                     if isinstance(key[2], int) and key[2] >= 500)
        return {"requests": total, "errors_5xx": errors,
                "connections_active": sum(self.connections_active.values())}


class _StatsCollector(Collector):
    def __init__(self, stats: RequestStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        requests = CounterMetricFamily("ami_requests", "Requests handled by the proxy.",
                                       labels=REQUEST_LABELS)
        duration = HistogramMetricFamily("ami_request_duration_seconds",
                                         "Request duration in seconds.",
                                         labels=REQUEST_LABELS)
        req_bytes = HistogramMetricFamily("ami_request_bytes", "Request body sizes in bytes.",
                                          labels=REQUEST_LABELS)
        resp_bytes = HistogramMetricFamily("ami_response_bytes", "Response body sizes in bytes.",
                                           labels=REQUEST_LABELS)
        for labels, s in stats.series():
            requests.add_metric(labels, s.count)
            duration.add_metric(labels, cumulative(DURATION_BUCKETS_S, s.dur_buckets),
                                s.dur_sum / 1000.0)
            req_bytes.add_metric(labels, cumulative(BYTES_BUCKETS, s.req_buckets), s.req_sum)
            resp_bytes.add_metric(labels, cumulative(BYTES_BUCKETS, s.resp_buckets), s.resp_sum)
        yield from (requests, duration, req_bytes, resp_bytes)
        yield from stats.rules.families()
        yield from stats.authz.families()
        active = GaugeMetricFamily("ami_downstream_connections_active",
                                   "Open client connections per listener.", labels=["listener"])
        opened = CounterMetricFamily("ami_downstream_connections",
                                     "Client connections accepted per listener.",
                                     labels=["listener"])
        for name, value in stats.connections_active.items():
            active.add_metric([name], value)
        for name, value in stats.connections_total.items():
            opened.add_metric([name], value)
        failures = CounterMetricFamily("ami_upstream_connect_failures",
                                       "Failed connection attempts to upstream endpoints.",
                                       labels=["destination_service"])
        for name, value in stats.connect_failures.items():
            failures.add_metric([name], value)
        yield from (active, opened, failures)
        for session in list(stats.tcp_live):
            session.flush()
        families: dict[str, CounterMetricFamily] = {}
        for (name, label_pairs), count in sorted(stats.counters.items()):
            fam = families.get(name)
            if fam is None:
                fam = families[name] = CounterMetricFamily(
                    name, _COUNTER_HELP.get(name, name), labels=[k for k, _ in label_pairs])
            fam.add_metric([v for _, v in label_pairs], count)
        yield from families.values()


_COUNTER_HELP = {
    "ami_retries": "Retries sent to upstreams.",
    "ami_retry_budget_exhausted": "Retries refused because the retry budget was spent.",
    "ami_retry_overflow": "Retries refused because the destination's connectionPool.maxRetries "
                          "requests were being retried already.",
    "ami_circuit_breaker_overflow": "Requests refused by connection-pool limits.",
    "ami_outlier_ejections": "Endpoints ejected by outlier detection.",
    "ami_outlier_panics": "Times a destination went into panic (outlierDetection."
                          "minHealthPercent): ejections ignored, every endpoint balanced over.",
    "ami_rate_limited": "Requests refused by a local rate limit.",
    "ami_faults_injected": "Faults injected by route rules.",
    "ami_mirrored_requests": "Requests copied to a mirror subset.",
    "ami_authorization_denied": "Requests denied by authorization policy.",
    "ami_ext_authz_checks": "Requests checked by an AuthorizationPolicy CUSTOM provider, by "
                            "result (allowed, denied, error).",
    "ami_jwt_invalid": "Requests refused because their JWT failed validation "
                       "(RequestAuthentication).",
    "ami_tls_handshake_failures": "TLS connections refused during or right after the "
                                  "handshake (inbound: no or foreign certificate, no single "
                                  "SPIFFE id; gateway: plaintext or failed handshake).",
    "ami_gateway_tls_refused": "TLS connections the gateway closed before passing them "
                               "through or terminating them, by reason (no_route, "
                               "protocol_mismatch, bad_client_hello, request_timeout).",
    "ami_proxy_protocol_refused": "Gateway connections closed for their PROXY protocol "
                                  "header (--proxy-protocol), by reason (not_proxy_protocol, "
                                  "malformed, unsupported, incomplete, timeout).",
    "ami_connections_refused": "Client connections closed at once: the listener's connection "
                               "limit was reached.",
    "ami_tcp_connections_opened": "TCP connections opened to or from a TCP service.",
    "ami_tcp_connections_closed": "TCP connections of a TCP service closed.",
    "ami_tcp_received_bytes": "Bytes of TCP connections from the caller to the destination.",
    "ami_tcp_sent_bytes": "Bytes of TCP connections from the destination to the caller.",
    "ami_config_reloads": "Static mode's config reloads (SIGHUP, --watch-config), by result "
                          "(applied, rejected: the running config stays, unchanged).",
    "ami_http2_flood_closes": "HTTP/2 client connections closed with GOAWAY ENHANCE_YOUR_CALM, "
                              "by kind of abuse (premature_reset: rapid reset; "
                              "unread_output: control frames or answers it does not read).",
}


class IdentityCollector(Collector):
    """Certificate expiries (workload, HTTPS gateway), so an alert can fire before a lapse."""

    def __init__(self, server: Any) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        gateway_tls = self.server.options.gateway_tls
        if gateway_tls is not None:  # its expiry moving on is how a renewal shows
            served = GaugeMetricFamily(
                "ami_gateway_certificate_expiry_timestamp_seconds",
                "When each certificate the HTTPS gateway serves expires (POSIX seconds), by "
                "its --gateway-cert file.", labels=["certificate"])
            for pair in gateway_tls.pairs:
                served.add_metric([str(pair.cert_file)], pair.not_after.timestamp())
            yield served
        tls = self.server.tls
        if tls is None:
            return
        identity = tls.identity
        expiry = GaugeMetricFamily(
            "ami_certificate_expiry_timestamp_seconds",
            "When this proxy's workload certificate expires (POSIX seconds).",
            labels=["spiffe_id"])
        expiry.add_metric([identity.spiffe_id], identity.not_after)
        yield expiry
        # its start too: an alert can then speak in fractions of the lifetime (certificateTTL)
        issued = GaugeMetricFamily(
            "ami_certificate_issued_timestamp_seconds",
            "When this proxy's workload certificate became valid (POSIX seconds, not_before).",
            labels=["spiffe_id"])
        issued.add_metric([identity.spiffe_id], identity.not_before)
        yield issued


class _BuildCollector(Collector):
    """``ami_build_info{version, python} 1`` (Prometheus' build_info convention), so a query
    can count sidecars per version during an upgrade."""

    def collect(self) -> Iterator[Metric]:
        build = GaugeMetricFamily("ami_build_info", "The proxy's Ami version and Python "
                                  "(always 1).", labels=["version", "python"])
        build.add_metric([VERSION, PYTHON], 1.0)
        yield build


def build_registry(stats: RequestStats, extra: list[Collector] | None = None) -> CollectorRegistry:
    """A registry exposing the request stats, process metrics, the proxy's build and any extra
    collectors."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(stats))
    registry.register(_BuildCollector())
    ProcessCollector(namespace="ami_proxy", registry=registry)
    for collector in extra or []:
        registry.register(collector)
    return registry

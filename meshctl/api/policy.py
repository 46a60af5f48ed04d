"""DestinationPolicy: subsets by labels and the traffic policy (balancer, pool, outliers, rate)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from meshctl.api import fields as F
from meshctl.api.errors import Issue, ValidationError
from meshctl.api.fields import Fields
from meshctl.api.locality import LocalityLbSetting, check_locality_lb, parse_locality_lb_setting

LOAD_BALANCERS = ("LEAST_REQUEST", "ROUND_ROBIN", "RANDOM", "PEAK_EWMA", "CONSISTENT_HASH")
# The balancers whose picks a warmup (slow start) scales, as Envoy's and Istio's
WARMUP_BALANCERS = ("LEAST_REQUEST", "ROUND_ROBIN")
POLICY_FIELDS = ("loadBalancer", "consistentHash", "warmup", "warmupDurationSecs",
                 "connectionPool", "outlierDetection", "rateLimit", "tls", "localityLbSetting")
TLS_MODES = ("DISABLE", "SIMPLE", "MUTUAL")
HASH_KEYS = ("header", "queryParameter", "sourceIp", "httpCookie")
HASH_FORMS = "{header: NAME}, {queryParameter: NAME}, {sourceIp: true}, {httpCookie: {name: NAME}}"
# RFC 6265 4.1.1: a cookie-name is an RFC 7230 token, as a header name is.
COOKIE_NAME = F.HEADER_NAME
# RFC 6265 4.1.1 path-value: any printable character but `;` (no CTL); absolute, as browsers
# use it.
COOKIE_PATH = r"^/[\x20-\x3a\x3c-\x7e]*$"
# The policy fields a subset may set for itself (Istio's subsets[].trafficPolicy, flat as the
# spec's own); rateLimit and tls stay with the host (see _NOT_IN_SUBSET).
SUBSET_POLICY_FIELDS = ("loadBalancer", "consistentHash", "warmup", "warmupDurationSecs",
                        "connectionPool", "outlierDetection")
# What goes with loadBalancer: a subset setting any of them replaces all of the host's
_BALANCING_FIELDS = ("loadBalancer", "consistentHash", "warmup", "warmupDurationSecs")
_NOT_IN_SUBSET = {
    "rateLimit": "not per subset: the destination's sidecars enforce it for every caller, "
                 "whatever subset a Route sent the request to; set it at the top of spec",
    "tls": "not per subset: it is for ExternalService hosts, whose endpoints no subset "
           "selects; set it at the top of spec",
    "localityLbSetting": "not per subset: set it at the top of spec, where it applies to the "
                         "traffic of every subset (each ordered by its own endpoints)",
    "trafficPolicy": "a subset takes the policy fields themselves, without trafficPolicy: "
                     "{name, labels, loadBalancer, consistentHash, warmup, connectionPool, "
                     "outlierDetection}",
}


@dataclass(frozen=True, slots=True)
class Subset:
    """A named group of a service's endpoints: those carrying all of ``labels``; ``policy``:
    the policy fields it sets itself, if any."""

    name: str
    labels: Mapping[str, str]
    policy: SubsetPolicy | None = None

    def selects(self, endpoint_labels: Mapping[str, str]) -> bool:
        """Whether an endpoint with ``endpoint_labels`` belongs to this subset."""
        return all(endpoint_labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True, slots=True)
class TcpKeepalive:
    """TCP keepalive probes on the connections to a destination (Istio's tcp.tcpKeepalive);
    None: the operating system's setting (Linux: 7200 s, 75 s, 9 probes)."""

    time: float | None = None  # idle time before the first probe
    interval: float | None = None  # between probes
    probes: int | None = None  # unanswered probes before the connection is dropped


@dataclass(frozen=True, slots=True)
class ConnectionPool:
    """Limits towards one destination; 0 maxRequestsPerConnection, maxConnectionDuration and
    maxRetries mean unlimited, 0 tcpIdleTimeout never."""

    max_connections: int = 1024
    max_pending_requests: int = 1024
    max_requests_per_connection: int = 0
    max_concurrent_requests: int = 1024
    idle_timeout: float = 10.0  # a pooled HTTP connection's
    connect_timeout: float = 5.0
    tcp_idle_timeout: float = 3600.0  # a TCP service's connection's (Istio's tcp.idleTimeout)
    tcp_keepalive: TcpKeepalive | None = None  # None: no keepalive probes (the OS default)
    max_connection_duration: float = 0.0  # a pooled HTTP connection's age limit
    max_retries: int = 0  # retries in progress at once to the destination (Envoy's max_retries)


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    """Passive health checking: eject endpoints after consecutive errors (0 disables a counter)."""

    consecutive_5xx_errors: int = 5
    consecutive_gateway_errors: int = 0
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: int = 10
    # Istio's minHealthPercent (Envoy's panic threshold): below this share of healthy
    # endpoints ejections are ignored. 0 (Istio's default) never panics.
    min_health_percent: int = 0
    # Envoy's split_external_local_origin_errors: connect failures, resets and timeouts count
    # toward consecutive_local_origin_failures alone, not toward the 5xx and gateway counters.
    split_external_local_origin_errors: bool = False
    consecutive_local_origin_failures: int = 5

    @property
    def detects(self) -> bool:
        """Whether any counter can eject an endpoint."""
        return bool(self.consecutive_5xx_errors or self.consecutive_gateway_errors or (
            self.split_external_local_origin_errors and self.consecutive_local_origin_failures))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Token bucket: ``requests_per_second`` refill, ``burst`` size, per caller or shared."""

    requests_per_second: float
    burst: int
    per_source: bool = False


@dataclass(frozen=True, slots=True)
class ConsistentHash:
    """What CONSISTENT_HASH keys a request by: a header, a query parameter, the client IP or
    a cookie (``path`` and ``ttl``: the cookie's, for the ``httpCookie`` form only)."""

    kind: str  # header | queryParameter | sourceIp | httpCookie
    name: str = ""  # the header (lower case), parameter or cookie name
    path: str | None = None  # httpCookie: the generated cookie's Path (None: none)
    ttl: float | None = None  # httpCookie: its Max-Age (0: a session cookie; None: never made)


@dataclass(frozen=True, slots=True)
class Warmup:
    """Slow start (Istio's loadBalancer.warmup, Envoy's slow_start_config): for ``duration``
    seconds after this proxy first sees an endpoint, its weight is scaled by
    max(minimum_percent / 100, (max(age, 1 s) / duration) ** (1 / aggression))."""

    duration: float
    minimum_percent: float = 10.0
    aggression: float = 1.0


@dataclass(frozen=True, slots=True)
class ClientTLS:
    """TLS a sidecar originates to a host outside the mesh (Istio's ClientTLSSettings)."""

    mode: str = "SIMPLE"  # SIMPLE: TLS, the server verified; MUTUAL: and a client certificate
    sni: str | None = None  # the server name sent and verified; default: the host asked for
    ca_certificates: str | None = None  # a PEM file on the sidecar's host; default: the system's
    client_certificate: str | None = None  # MUTUAL: PEM files on the sidecar's host
    private_key: str | None = None


@dataclass(frozen=True, slots=True)
class TrafficPolicy:
    """How a destination is called; an absent block (None) means that layer is not installed."""

    load_balancer: str = "LEAST_REQUEST"
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    rate_limit: RateLimit | None = None
    consistent_hash: ConsistentHash | None = None  # with load_balancer CONSISTENT_HASH only
    tls: ClientTLS | None = None  # ExternalService hosts only: mesh hops are mTLS anyway
    locality_lb: LocalityLbSetting | None = None  # localityLbSetting (meshctl.api.locality)
    warmup: Warmup | None = None  # ROUND_ROBIN and LEAST_REQUEST only


@dataclass(frozen=True, slots=True)
class SubsetPolicy:
    """The policy fields a subset sets (None: the host's). Each replaces the host's whole
    field, as Istio merges a subset's trafficPolicy: a subset's ``connectionPool`` is the
    whole pool (its unset limits at their defaults, not the host's); ``load_balancer`` comes
    with its own ``consistent_hash`` and ``warmup`` (Istio's loadBalancer holds all three)."""

    load_balancer: str | None = None
    consistent_hash: ConsistentHash | None = None  # with load_balancer CONSISTENT_HASH only
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None
    warmup: Warmup | None = None  # with load_balancer ROUND_ROBIN or LEAST_REQUEST only

    def over(self, host: TrafficPolicy) -> TrafficPolicy:
        """The policy of traffic routed to the subset: ``host``'s, with this one's fields."""
        policy = host
        if self.load_balancer is not None:
            policy = replace(policy, load_balancer=self.load_balancer,
                             consistent_hash=self.consistent_hash, warmup=self.warmup)
        if self.connection_pool is not None:
            policy = replace(policy, connection_pool=self.connection_pool)
        if self.outlier_detection is not None:
            policy = replace(policy, outlier_detection=self.outlier_detection)
        return policy


@dataclass(frozen=True, slots=True)
class DestinationPolicySpec:
    """spec of a DestinationPolicy."""

    host: str
    subsets: tuple[Subset, ...] = ()
    policy: TrafficPolicy = TrafficPolicy()

    def subset(self, name: str) -> Subset | None:
        """The subset called ``name``, if defined."""
        return next((s for s in self.subsets if s.name == name), None)


SERVICE = F.string(F.DNS_LABEL, "a service name (DNS-1123 label)")
# What a Route or a DestinationPolicy is for: a mesh service, or an ExternalService host.
HOST = F.string(F.DNS_SUBDOMAIN, "a service name, or the DNS name of an ExternalService host",
                253)


def parse_destination_policy(data: object, path: str) -> DestinationPolicySpec:
    """Parse DestinationPolicy.spec."""
    f = Fields(data, path)
    host = f.required("host", HOST, "")
    subsets = f.value("subsets", parse_subsets, ())
    policy = read_policy(f)
    if policy.locality_lb is not None:  # ordering by locality needs ejections, somewhere
        outliers = policy.outlier_detection is not None or any(
            s.policy is not None and s.policy.outlier_detection is not None for s in subsets)
        try:
            check_locality_lb(policy.locality_lb, outliers, f.at("localityLbSetting"))
        except ValidationError as err:
            f.issues.extend(err.issues)
    f.finish()
    return DestinationPolicySpec(host, subsets, policy)


def parse_policy(data: object, path: str) -> TrafficPolicy:
    """Parse a mapping holding only traffic-policy fields (a proxy snapshot's ``policy``)."""
    f = Fields(data, path)
    policy = read_policy(f)
    f.finish()
    return policy


def read_policy(f: Fields) -> TrafficPolicy:
    """Read the traffic-policy fields of an open mapping (so specs can add their own fields)."""
    balancer, hashing, warmup = _read_balancer(f)
    return TrafficPolicy(
        balancer,
        f.optional("connectionPool", parse_connection_pool),
        f.optional("outlierDetection", parse_outlier_detection),
        f.optional("rateLimit", parse_rate_limit),
        hashing,
        f.optional("tls", parse_client_tls),
        f.optional("localityLbSetting", parse_locality_lb_setting),
        warmup,
    )


def _read_balancer(f: Fields, subset: bool = False
                   ) -> tuple[str, ConsistentHash | None, Warmup | None]:
    """loadBalancer with what goes with it: consistentHash (with CONSISTENT_HASH, and only
    then) and warmup (ROUND_ROBIN and LEAST_REQUEST only)."""
    balancer = f.value("loadBalancer", F.enum(LOAD_BALANCERS), "LEAST_REQUEST")
    hashing = f.optional("consistentHash", parse_consistent_hash)
    if balancer == "CONSISTENT_HASH" and not f.has("consistentHash"):
        f.add(f.at("consistentHash"), f"CONSISTENT_HASH needs consistentHash: one of {HASH_FORMS}")
    elif f.has("consistentHash") and balancer != "CONSISTENT_HASH":
        f.add(f.at("consistentHash"), "has no effect unless loadBalancer is CONSISTENT_HASH"
              + (" in this subset (a subset's loadBalancer replaces the host's loadBalancer, "
                 "consistentHash and warmup together)" if subset else ""))
    warmup = _read_warmup(f)
    if warmup is not None and balancer not in WARMUP_BALANCERS:
        key = "warmup" if f.has("warmup") else "warmupDurationSecs"
        f.add(f.at(key), f"only with loadBalancer ROUND_ROBIN or LEAST_REQUEST (as Envoy's slow "
                         f"start), not {balancer}: {_NO_WARMUP.get(balancer, '')}"
              + (" (a subset's loadBalancer replaces the host's loadBalancer, consistentHash "
                 "and warmup together)" if subset else ""))
    return balancer, hashing, warmup


_NO_WARMUP = {
    "RANDOM": "a uniform draw has no weights to scale",
    "PEAK_EWMA": "it already steers away from a slow new endpoint by its measured latency",
    "CONSISTENT_HASH": "a key's endpoint is fixed by the ring, not by a weight",
}


def _read_warmup(f: Fields) -> Warmup | None:
    """warmup: {duration, minimumPercent, aggression}, or Istio's older warmupDurationSecs
    (the duration alone); not both."""
    warmup = f.optional("warmup", parse_warmup)
    seconds = f.optional("warmupDurationSecs", F.duration())
    if f.has("warmup") and f.has("warmupDurationSecs"):
        f.add(f.at("warmupDurationSecs"), "set warmup or warmupDurationSecs, not both "
                                          "(warmupDurationSecs: D is warmup: {duration: D})")
    return warmup if warmup is not None else (
        Warmup(seconds) if seconds is not None else None)


def parse_warmup(data: object, path: str) -> Warmup:
    """warmup: {duration: 60s, minimumPercent: 10, aggression: 1.0} (duration required)."""
    f = Fields(data, path)
    d = Warmup(0.0)
    warmup = Warmup(
        f.required("duration", F.duration(), 1.0),
        f.value("minimumPercent", F.number(0, 100), d.minimum_percent),
        f.value("aggression", F.number(0), d.aggression))
    if f.has("aggression") and warmup.aggression <= 0:
        f.add(f.at("aggression"), "must be greater than 0 (1.0: a linear ramp; above 1 the "
                                  "weight rises faster early on)")
    f.finish()
    return warmup


def read_subset_policy(f: Fields) -> SubsetPolicy | None:
    """Read the policy fields a subset entry sets for itself (None: it sets none)."""
    for key, why in _NOT_IN_SUBSET.items():
        if f.has(key):
            f.add(f.at(key), why)
    if not any(f.has(k) for k in SUBSET_POLICY_FIELDS):
        return None
    balancing = any(f.has(k) for k in _BALANCING_FIELDS)
    balancer, hashing, warmup = _read_balancer(f, subset=True) if balancing \
        else (None, None, None)
    return SubsetPolicy(balancer, hashing,
                        f.optional("connectionPool", parse_connection_pool),
                        f.optional("outlierDetection", parse_outlier_detection), warmup)


def parse_subset_policy(data: object, path: str) -> SubsetPolicy | None:
    """Parse a mapping holding only a subset's policy fields (a proxy snapshot's subset
    ``policy``)."""
    f = Fields(data, path)
    policy = read_subset_policy(f)
    f.finish()
    return policy


_PEM_PATH = F.string(r"^/.*", "an absolute path to a PEM file on the sidecar's host", 4096)


def parse_client_tls(data: object, path: str) -> ClientTLS:
    """tls: {mode: SIMPLE|MUTUAL|DISABLE, sni: NAME, caCertificates: /path/to/roots.pem,
    clientCertificate: /path/cert.pem, privateKey: /path/key.pem (MUTUAL)}."""
    f = Fields(data, path)
    tls = ClientTLS(
        f.value("mode", F.enum(TLS_MODES), "SIMPLE"),
        f.optional("sni", F.string(F.DNS_SUBDOMAIN, "a DNS name", 253)),
        f.optional("caCertificates", _PEM_PATH),
        f.optional("clientCertificate", _PEM_PATH),
        f.optional("privateKey", _PEM_PATH))
    mutual = tls.mode == "MUTUAL"
    for key in ("clientCertificate", "privateKey"):
        if mutual and not f.has(key):
            f.add(f.at(key), "MUTUAL needs clientCertificate and privateKey")
        elif f.has(key) and not mutual:
            f.add(f.at(key), "only with mode MUTUAL")
    f.finish()
    return tls


def parse_consistent_hash(data: object, path: str) -> ConsistentHash:
    """Exactly one of {header: NAME}, {queryParameter: NAME}, {sourceIp: true},
    {httpCookie: {name: NAME, path: /PATH, ttl: DURATION}}."""
    f = Fields(data, path)
    header = f.optional("header", F.string(F.HEADER_NAME, "an HTTP header name"))
    parameter = f.optional("queryParameter", F.string(r"^[^\s&=#]+$", "a query parameter name"))
    source_ip = f.optional("sourceIp", F.boolean)
    cookie = f.optional("httpCookie", parse_http_cookie)
    given = [k for k in HASH_KEYS if f.has(k)]
    if len(given) != 1:
        f.add(path, "set exactly one of header, queryParameter, sourceIp, httpCookie")
    elif source_ip is False:
        f.add(f.at("sourceIp"), "must be true (or leave it out)")
    f.finish()
    if header is not None:
        return ConsistentHash("header", header.lower())
    if parameter is not None:
        return ConsistentHash("queryParameter", parameter)
    if cookie is not None:
        return cookie
    return ConsistentHash("sourceIp")


def parse_http_cookie(data: object, path: str) -> ConsistentHash:
    """httpCookie: {name: NAME (required), path: /PATH, ttl: DURATION} (Istio's HTTPCookie):
    requests are keyed by the cookie; with ``ttl`` the proxy sets it on a client that has
    none (0s: a session cookie, without Max-Age)."""
    f = Fields(data, path)
    name = f.required("name", F.string(COOKIE_NAME, "a cookie name (an RFC 6265 token: "
                                                    "letters, digits and !#$%&'*+-.^_`|~)"), "")
    cookie_path = f.optional("path", F.string(COOKIE_PATH, "a cookie path: `/`, then "
                                                          "printable characters but `;`", 1024))
    ttl = f.optional("ttl", F.duration(1.0, zero="a session cookie"))
    f.finish()
    return ConsistentHash("httpCookie", name, cookie_path, ttl)


def parse_subsets(data: object, path: str) -> tuple[Subset, ...]:
    """Parse a list of subsets with unique names."""
    subsets = F.list_of(_parse_subset)(data, path)
    issues: list[Issue] = []
    seen: dict[str, int] = {}
    for index, subset in enumerate(subsets):
        if subset.name in seen:
            issues.append(Issue(None, None, f"{path}[{index}].name",
                                f"duplicate subset '{subset.name}', "
                                f"already defined by subsets[{seen[subset.name]}]"))
        seen.setdefault(subset.name, index)
    if issues:
        raise ValidationError(issues)
    return subsets


def _parse_subset(data: object, path: str) -> Subset:
    f = Fields(data, path)
    name = f.required("name", F.string(F.DNS_LABEL, "a subset name (DNS-1123 label)"), "")
    labels = f.required("labels", F.labels, {})
    policy = read_subset_policy(f)
    f.finish()
    return Subset(name, labels, policy)


# Istio's DestinationRule spelling, connectionPool: {tcp: {...}, http: {...}}: each field and
# the flat Ami field it sets (None: accepted, with nothing to set; see _ISTIO_REFUSED)
_ISTIO_TCP = {"maxConnections": "maxConnections", "connectTimeout": "connectTimeout",
              "idleTimeout": "tcpIdleTimeout", "tcpKeepalive": "tcpKeepalive",
              "maxConnectionDuration": "maxConnectionDuration"}
_ISTIO_HTTP = {"http1MaxPendingRequests": "maxPendingRequests",
               "http2MaxRequests": "maxConcurrentRequests",
               "maxRequestsPerConnection": "maxRequestsPerConnection",
               "maxRetries": "maxRetries", "idleTimeout": "idleTimeout",
               "h2UpgradePolicy": None}
_ISTIO_REFUSED = {
    "maxConcurrentStreams": "not supported: an HTTP/2 connection to an endpoint carries as "
                            "many streams as the endpoint's SETTINGS_MAX_CONCURRENT_STREAMS allows",
}
# Istio's fields whose 0 Istio reads as unset (its applyConnectionPool sets a threshold only
# when > 0): the default, not Ami's 0 (which would be no queue at all for
# http1MaxPendingRequests)
ISTIO_ZERO_UNSET = ("maxConnections", "http1MaxPendingRequests", "http2MaxRequests")
_UNSET = object()
# (group, Istio's field, the flat field it sets): for the JSON schema's "given once"
ISTIO_POOL_SPELLINGS = tuple((group, name, flat) for group, names in (
    ("tcp", _ISTIO_TCP), ("http", _ISTIO_HTTP)) for name, flat in names.items()
    if flat is not None)
# h2UpgradePolicy: Ami never upgrades an HTTP/1.1 request to HTTP/2 (what these two mean)
H2_UPGRADE_POLICIES = ("DEFAULT", "DO_NOT_UPGRADE")


def parse_connection_pool(data: object, path: str) -> ConnectionPool:
    """Parse connectionPool (every field optional): Ami's flat fields, or Istio's `tcp` and
    `http` groups, or both, each setting given once."""
    f = Fields(data, path)
    given = _istio_groups(f)
    raw = dict(given)
    for key in (*_FLAT_POOL_FIELDS, "tcpKeepalive", "maxConnectionDuration", "maxRetries"):
        if f.has(key):
            if key in given:
                f.add(f.at(key), f"the same setting as {given[key][1]}: give it once")
                continue
            raw[key] = (f.raw(key), f.at(key))
    d = ConnectionPool()

    def value(key: str, conv: F.Conv[Any], default: Any) -> Any:
        if key not in raw or raw[key][0] is _UNSET:
            return default
        try:
            return conv(*raw[key])
        except ValidationError as err:
            f.issues.extend(err.issues)
            return default

    pool = ConnectionPool(
        value("maxConnections", F.integer(1), d.max_connections),
        value("maxPendingRequests", F.integer(0), d.max_pending_requests),
        value("maxRequestsPerConnection", F.integer(0), d.max_requests_per_connection),
        value("maxConcurrentRequests", F.integer(1), d.max_concurrent_requests),
        value("idleTimeout", F.duration(), d.idle_timeout),
        value("connectTimeout", F.duration(), d.connect_timeout),
        value("tcpIdleTimeout", F.duration(zero="never"), d.tcp_idle_timeout),
        value("tcpKeepalive", parse_tcp_keepalive, None),
        value("maxConnectionDuration", F.duration(), d.max_connection_duration),
        value("maxRetries", F.integer(0), d.max_retries),
    )
    f.finish()
    return pool


_FLAT_POOL_FIELDS = ("maxConnections", "maxPendingRequests", "maxRequestsPerConnection",
                     "maxConcurrentRequests", "idleTimeout", "connectTimeout", "tcpIdleTimeout")


def _istio_groups(f: Fields) -> dict[str, tuple[object, str]]:
    """The settings Istio's `tcp` and `http` groups give: flat field -> (raw value, path)."""
    given: dict[str, tuple[object, str]] = {}
    for group, names in (("tcp", _ISTIO_TCP), ("http", _ISTIO_HTTP)):
        if not f.has(group):
            continue
        try:
            g = Fields(f.raw(group), f.at(group))
        except ValidationError as err:
            f.issues.extend(err.issues)
            continue
        for name, flat in names.items():
            if flat is not None and g.has(name):
                raw = g.raw(name)
                if name in ISTIO_ZERO_UNSET and raw == 0 and type(raw) is int:
                    raw = _UNSET  # as Istio: 0 is the default
                given[flat] = (raw, g.at(name))
        if group == "http":
            if g.raw("h2UpgradePolicy") == "UPGRADE":
                g.add(g.at("h2UpgradePolicy"), "not supported: Ami does not upgrade HTTP/1.1 "
                      "requests to HTTP/2; a request goes to an endpoint in its port's "
                      "appProtocol (auto: the client's own); DEFAULT and DO_NOT_UPGRADE are "
                      "accepted, and mean just that")
            else:
                g.optional("h2UpgradePolicy", F.enum(H2_UPGRADE_POLICIES))
            if g.raw("useClientProtocol") is True:
                g.add(g.at("useClientProtocol"), "not supported: the protocol spoken to an "
                      "endpoint is its port's appProtocol; declare the port appProtocol: auto "
                      "for the client's own (what useClientProtocol: true asks); false, "
                      "Istio's default, is accepted")
            else:  # Istio's default: the port's protocol decides, as in Ami
                g.optional("useClientProtocol", F.boolean)
            for name, why in _ISTIO_REFUSED.items():
                if g.has(name):
                    g.add(g.at(name), why)
        try:
            g.finish()
        except ValidationError as err:
            f.issues.extend(err.issues)
    return given


# Linux's MAX_TCP_KEEPIDLE and MAX_TCP_KEEPINTVL (seconds): the kernel refuses more (EINVAL)
MAX_KEEPALIVE_SECONDS = 32767


def parse_tcp_keepalive(data: object, path: str) -> TcpKeepalive:
    """tcpKeepalive: {time, interval, probes}, each optional (the OS's when absent); time and
    interval 1s to 32767s, probes 1 to 127 (what the kernel takes)."""
    f = Fields(data, path)
    keepalive = TcpKeepalive(
        f.optional("time", F.duration(1.0)),
        f.optional("interval", F.duration(1.0)),
        f.optional("probes", F.integer(1, 127)),
    )
    for name in ("time", "interval"):
        seconds = getattr(keepalive, name)
        if seconds is not None and seconds > MAX_KEEPALIVE_SECONDS:
            f.add(f.at(name), f"must be at most {MAX_KEEPALIVE_SECONDS}s (9h6m7s, the "
                  f"kernel's limit), got {f.raw(name)}")
    f.finish()
    return keepalive


def parse_outlier_detection(data: object, path: str) -> OutlierDetection:
    """Parse outlierDetection (every field optional)."""
    f = Fields(data, path)
    d = OutlierDetection()
    detection = OutlierDetection(
        f.value("consecutive5xxErrors", F.integer(0), d.consecutive_5xx_errors),
        f.value("consecutiveGatewayErrors", F.integer(0), d.consecutive_gateway_errors),
        f.value("interval", F.duration(), d.interval),
        f.value("baseEjectionTime", F.duration(), d.base_ejection_time),
        f.value("maxEjectionPercent", F.integer(0, 100), d.max_ejection_percent),
        f.value("minHealthPercent", F.integer(0, 100), d.min_health_percent),
        f.value("splitExternalLocalOriginErrors", F.boolean,
                d.split_external_local_origin_errors),
        f.value("consecutiveLocalOriginFailures", F.integer(0),
                d.consecutive_local_origin_failures),
    )
    if f.has("consecutiveLocalOriginFailures") and not detection.split_external_local_origin_errors:
        f.add(f.at("consecutiveLocalOriginFailures"),
              "has no effect unless splitExternalLocalOriginErrors is true (without it, "
              "connect failures, resets and timeouts count as 5xx and gateway errors)")
    if f.has("consecutiveErrors"):
        f.add(f.at("consecutiveErrors"), "Istio's deprecated spelling: write "
              "consecutive5xxErrors (any 5xx) or consecutiveGatewayErrors (502, 503, 504)")
    f.finish()
    return detection


def parse_rate_limit(data: object, path: str) -> RateLimit:
    """Parse rateLimit; burst defaults to one second's worth of requests."""
    f = Fields(data, path)
    rate = f.required("requestsPerSecond", F.number(0.001), 1.0)
    burst = f.value("burst", F.integer(1), max(1, math.ceil(rate)))
    per_source = f.value("perSource", F.boolean, False)
    f.finish()
    return RateLimit(rate, burst, per_source)

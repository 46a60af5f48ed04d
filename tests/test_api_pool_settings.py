"""DestinationPolicy connectionPool in Istio's tcp/http spelling, tcpKeepalive,
maxConnectionDuration, maxRetries, and outlierDetection's local-origin split: parsing, refusals
and the JSON schema agreeing with the parser."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.jsonschema import schema_for
from meshctl.api.policy import (
    ConnectionPool,
    OutlierDetection,
    TcpKeepalive,
    parse_connection_pool,
    parse_outlier_detection,
)


def _errors(conv: Any, data: object) -> list[str]:
    with pytest.raises(ValidationError) as err:
        conv(data, "spec.x")
    return [f"{i.path}: {i.message}" for i in err.value.issues]


def test_istio_groups_set_the_same_fields_as_the_flat_spelling() -> None:
    """Istio's DestinationRule connectionPool, pasted as it is, means what Ami's flat fields
    mean: each Istio field lands on its Ami counterpart."""
    istio = parse_connection_pool({
        "tcp": {"maxConnections": 100, "connectTimeout": "30ms", "idleTimeout": "0s",
                "tcpKeepalive": {"time": "60s", "interval": "10s", "probes": 3},
                "maxConnectionDuration": "10m"},
        "http": {"http1MaxPendingRequests": 7, "http2MaxRequests": 50,
                 "maxRequestsPerConnection": 9, "maxRetries": 2, "idleTimeout": "5s",
                 "h2UpgradePolicy": "DO_NOT_UPGRADE", "useClientProtocol": False}},
        "spec.connectionPool")
    flat = parse_connection_pool({
        "maxConnections": 100, "connectTimeout": "30ms", "tcpIdleTimeout": "0s",
        "tcpKeepalive": {"time": "60s", "interval": "10s", "probes": 3},
        "maxConnectionDuration": "10m", "maxPendingRequests": 7, "maxConcurrentRequests": 50,
        "maxRequestsPerConnection": 9, "maxRetries": 2, "idleTimeout": "5s"},
        "spec.connectionPool")
    assert istio == flat == ConnectionPool(100, 7, 9, 50, 5.0, 0.03, 0.0,
                                           TcpKeepalive(60.0, 10.0, 3), 600.0, 2)


def test_istio_zero_limits_mean_istios_default_not_zero() -> None:
    """Istio sets tcp.maxConnections, http.http1MaxPendingRequests and http.http2MaxRequests
    only when above 0: a DestinationRule's 0 is the default. Pasted here it must not become
    Ami's maxPendingRequests 0 (no queue: every request beyond the connections overflows)."""
    pool = parse_connection_pool({"tcp": {"maxConnections": 0}, "http": {
        "http1MaxPendingRequests": 0, "http2MaxRequests": 0}}, "spec.connectionPool")
    assert pool == ConnectionPool()
    assert parse_connection_pool({"maxPendingRequests": 0}, "p").max_pending_requests == 0
    assert parse_connection_pool({"http": {"http1MaxPendingRequests": 3}},
                                 "p").max_pending_requests == 3
    assert _errors(parse_connection_pool, {"maxPendingRequests": 5, "http": {
        "http1MaxPendingRequests": 0}}) == [
        "spec.x.maxPendingRequests: the same setting as spec.x.http.http1MaxPendingRequests: "
        "give it once"]


def test_defaults_leave_the_new_settings_off() -> None:
    pool = parse_connection_pool({}, "spec.connectionPool")
    assert (pool.tcp_keepalive, pool.max_connection_duration, pool.max_retries) == (None, 0, 0)
    assert parse_connection_pool({"tcpKeepalive": {}}, "p").tcp_keepalive == TcpKeepalive()
    detection = parse_outlier_detection({}, "spec.outlierDetection")
    assert not detection.split_external_local_origin_errors
    assert detection.consecutive_local_origin_failures == 5


@pytest.mark.parametrize(("data", "expected"), [
    ({"maxConnections": 5, "tcp": {"maxConnections": 100}},
     "spec.x.maxConnections: the same setting as spec.x.tcp.maxConnections: give it once"),
    ({"maxPendingRequests": 5, "http": {"http1MaxPendingRequests": 1}},
     "spec.x.maxPendingRequests: the same setting as spec.x.http.http1MaxPendingRequests"),
    ({"tcpIdleTimeout": "1m", "tcp": {"idleTimeout": "2m"}},
     "spec.x.tcpIdleTimeout: the same setting as spec.x.tcp.idleTimeout"),
    ({"http": {"h2UpgradePolicy": "UPGRADE"}},
     "spec.x.http.h2UpgradePolicy: not supported: Ami does not upgrade HTTP/1.1"),
    ({"http": {"useClientProtocol": True}},
     "spec.x.http.useClientProtocol: not supported: the protocol spoken to an endpoint is "
     "its port's appProtocol; declare the port appProtocol: auto"),
    ({"http": {"useClientProtocol": "no"}},
     "spec.x.http.useClientProtocol: expected true or false"),
    ({"http": {"maxConcurrentStreams": 10}}, "spec.x.http.maxConcurrentStreams: not supported"),
    ({"http": {"http1MaxPendingRequest": 1}},
     "spec.x.http.http1MaxPendingRequest: unknown field, did you mean "
     "'http1MaxPendingRequests'?"),
    ({"tcp": {"tcpKeepalive": {"time": "500ms"}}},
     "spec.x.tcp.tcpKeepalive.time: must be at least 1s"),
    ({"tcpKeepalive": {"probes": 0}}, "spec.x.tcpKeepalive.probes: must be between 1 and 127"),
    # beyond the kernel's TCP_KEEPIDLE / TCP_KEEPINTVL limit: setsockopt would fail (EINVAL)
    ({"tcpKeepalive": {"time": "10h"}},
     "spec.x.tcpKeepalive.time: must be at most 32767s (9h6m7s, the kernel's limit), got 10h"),
    ({"tcp": {"tcpKeepalive": {"interval": "32768s"}}},
     "spec.x.tcp.tcpKeepalive.interval: must be at most 32767s"),
    ({"tcp": "100"}, "spec.x.tcp: expected a mapping"),
    ({"maxRetries": -1}, "spec.x.maxRetries: must be at least 0"),
    ({"maxConnectionDuration": "0s"}, "spec.x.maxConnectionDuration: must be a positive"),
])
def test_pool_refusals_name_the_field(data: dict[str, Any], expected: str) -> None:
    errors = _errors(parse_connection_pool, data)
    assert any(e.startswith(expected) for e in errors), errors


@pytest.mark.parametrize(("data", "expected"), [
    ({"consecutiveLocalOriginFailures": 3},
     "spec.x.consecutiveLocalOriginFailures: has no effect unless "
     "splitExternalLocalOriginErrors is true"),
    ({"consecutiveErrors": 3},
     "spec.x.consecutiveErrors: Istio's deprecated spelling: write consecutive5xxErrors"),
    ({"splitExternalLocalOriginErrors": "yes"},
     "spec.x.splitExternalLocalOriginErrors: expected true or false"),
])
def test_outlier_refusals_name_the_field(data: dict[str, Any], expected: str) -> None:
    errors = _errors(parse_outlier_detection, data)
    assert any(e.startswith(expected) for e in errors), errors


def test_a_detector_is_installed_for_local_origin_failures_alone() -> None:
    """With every HTTP counter off, the local-origin counter still ejects (split mode only)."""
    only_local = OutlierDetection(0, 0, split_external_local_origin_errors=True,
                                  consecutive_local_origin_failures=2)
    assert only_local.detects
    assert not OutlierDetection(0, 0).detects
    assert not OutlierDetection(0, 0, split_external_local_origin_errors=True,
                                consecutive_local_origin_failures=0).detects


def _policy(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "ami.mesh/v1alpha1", "kind": "DestinationPolicy",
            "metadata": {"name": "reviews"}, "spec": {"host": "reviews", **spec}}


@pytest.mark.parametrize(("spec", "valid"), [
    ({"connectionPool": {"tcp": {"maxConnections": 1, "tcpKeepalive": {"probes": 3}},
                         "http": {"http2MaxRequests": 5, "h2UpgradePolicy": "DEFAULT"}}}, True),
    ({"connectionPool": {"maxRetries": 3, "maxConnectionDuration": "1h",
                         "tcpKeepalive": {"time": "1m"}}}, True),
    ({"outlierDetection": {"splitExternalLocalOriginErrors": True,
                           "consecutiveLocalOriginFailures": 2}}, True),
    ({"outlierDetection": {"consecutiveLocalOriginFailures": 2}}, False),
    ({"connectionPool": {"http": {"h2UpgradePolicy": "UPGRADE"}}}, False),
    ({"connectionPool": {"http": {"useClientProtocol": True}}}, False),
    # Istio's default, as pasted from a DestinationRule: what Ami does
    ({"connectionPool": {"http": {"useClientProtocol": False}}}, True),
    # Istio's 0: the default
    ({"connectionPool": {"tcp": {"maxConnections": 0}}}, True),
    ({"connectionPool": {"http": {"http1MaxPendingRequests": 0, "http2MaxRequests": 0}}}, True),
    ({"connectionPool": {"maxConnections": 0}}, False),
    ({"connectionPool": {"maxConcurrentRequests": 0}}, False),
    # a setting given both ways
    ({"connectionPool": {"maxConnections": 5, "tcp": {"maxConnections": 100}}}, False),
    ({"connectionPool": {"maxRetries": 1, "http": {"maxRetries": 2}}}, False),
    ({"connectionPool": {"tcpIdleTimeout": "1m", "tcp": {"idleTimeout": "2m"}}}, False),
    ({"connectionPool": {"idleTimeout": "1m", "tcp": {"idleTimeout": "2m"}}}, True),
    ({"connectionPool": {"tcpIdleTimeout": "1m", "http": {"idleTimeout": "2m"}}}, True),
    ({"subsets": [{"name": "v1", "labels": {"version": "v1"}, "connectionPool": {
        "maxConcurrentRequests": 3, "http": {"http2MaxRequests": 3}}}]}, False),
])
def test_schema_agrees_with_the_parser(spec: dict[str, Any], valid: bool) -> None:
    """An editor with `meshctl schema` flags what `meshctl apply` refuses, and no more."""
    from meshctl.api.resources import parse_document

    doc = _policy(spec)
    schema_ok = jsonschema.Draft202012Validator(schema_for("DestinationPolicy")).is_valid(doc)
    try:
        parse_document(doc)
        parser_ok = True
    except ValidationError:
        parser_ok = False
    assert (schema_ok, parser_ok) == (valid, valid)

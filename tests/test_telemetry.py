"""Telemetry without processes: the filter language (what it accepts, what it refuses and
where), parsing and validation of the kind, precedence (workload > namespace > MeshConfig),
what the snapshots carry of it (nothing when none applies) and how the proxy reads it."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest

from meshctl.api.accessfilter import FilterError, compile_filter
from meshctl.api.errors import ValidationError
from meshctl.api.resources import Resource, load_documents, validate_set
from meshctl.api.telemetry import AccessLogging, TelemetrySpec, TelemetryTracing
from meshctl.controlplane.registry import ProxyInfo
from meshctl.controlplane.snapshots import SnapshotBuilder
from proxy.config import ConfigError, Snapshot


def request(status: int = 200, flags: str = "-", method: bytes = b"GET", path: str = "/",
            authority: str = "reviews", query: str = "") -> Any:
    return SimpleNamespace(status=status, flags=flags, method=method, path=path,
                           authority=authority, query=query)


# -- the filter language ---------------------------------------------------------------------

@pytest.mark.parametrize(("expression", "logged", "skipped"), [
    ("response.code >= 400", request(404), request(200)),
    ("response.code == 503", request(503), request(500)),
    ("response.code != 200", request(201), request(200)),
    ("400 <= response.code", request(400), request(399)),
    ('request.method == "POST"', request(method=b"POST"), request(method=b"GET")),
    ("request.method == 'POST'", request(method=b"POST"), request(method=b"GET")),
    ('request.path.startsWith("/api")', request(path="/api/v1"), request(path="/web/api")),
    ('request.path.endsWith(".js")', request(path="/a.js"), request(path="/a.css")),
    # Envoy's request.path is the :path, query included; request.url_path is without it
    ('request.path.contains("debug=1")', request(path="/q", query="debug=1"),
     request(path="/q")),
    ('request.path == "/q"', request(path="/q"), request(path="/q", query="a=1")),
    ('request.url_path == "/q"', request(path="/q", query="a=1"), request(path="/r")),
    ('request.host.contains("view")', request(authority="reviews"), request(authority="a")),
    ('response.flags != "-"', request(flags="upstream_connect_failure"), request()),
    ('response.code >= 500 && request.method == "POST"',
     request(502, method=b"POST"), request(502)),
    ("response.code == 404 || response.code == 503", request(503), request(500)),
    ("!(response.code < 400)", request(404), request(200)),
    ("!!(response.code >= 400)", request(404), request(200)),
    # && binds tighter than ||: a || (b && c)
    ('response.code == 500 || response.code == 404 && request.method == "POST"',
     request(500, method=b"GET"), request(404, method=b"GET")),
    ('(response.code == 500 || response.code == 404) && request.method == "POST"',
     request(404, method=b"POST"), request(500, method=b"GET")),
    ("true", request(), None),
    ("false", None, request()),
])
def test_filter_logs_what_it_says(expression: str, logged: Any, skipped: Any) -> None:
    predicate = compile_filter(expression)
    if logged is not None:
        assert predicate(logged) is True
    if skipped is not None:
        assert predicate(skipped) is False


@pytest.mark.parametrize(("expression", "column", "words"), [
    ('response.code >= "400"', 18, "cannot compare an integer with a string"),
    # Envoy's response.flags is a bit set: the refusal says how Ami writes "any flag"
    ("response.flags != 0", 19, 'cannot compare a string with an integer; response.flags is '
     'the reason word, "-" when none (Envoy\'s response.flags != 0 is response.flags != "-")'),
    ("response.code >=", 17, "expected an attribute, a number or a string, got the end"),
    ("response.status >= 400", 1, "unknown attribute 'response.status'"),
    ("response.code == 1 & true", 20, "unexpected character '&'"),
    ("response.code", 14, "expected a comparison"),
    ('__import__("os").system("x")', 1, "unknown attribute '__import__'"),
    ("request.path.startsWith(1)", 25, "startsWith takes a string"),
    ('request.path.matches("a.*")', 14, "expected startsWith, endsWith or contains"),
    ('request.method < "POST"', 16, "strings compare with == or != only"),
    ("(response.code == 1", 20, "expected ')', got the end"),
    ("response.code == 1)", 19, "expected '&&', '||' or the end, got ')'"),
    ("response.code in [500, 503]", 18, "unexpected character '['"),
    ("size(request.path) > 3", 1, "unknown attribute 'size'"),
    ("  ", 1, "empty expression"),
    ("response.code == 500 ; true", 22, "unexpected character ';'"),
])
def test_filter_outside_the_subset_is_refused_with_its_column(expression: str, column: int,
                                                               words: str) -> None:
    with pytest.raises(FilterError) as caught:
        compile_filter(expression)
    assert caught.value.column == column
    assert str(caught.value).startswith(f"column {column}: ") and words in str(caught.value)


# -- the kind ----------------------------------------------------------------------------------

def telemetry(name: str, spec: str, namespace: str = "default") -> str:
    return (f"apiVersion: ami.mesh/v1alpha1\nkind: Telemetry\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n")


def load(*texts: str) -> list[Resource]:
    return [r for n, text in enumerate(texts, 1) for r in load_documents(text, f"f{n}.yaml")]


def test_spec_parses_istios_shape() -> None:
    [r] = load(telemetry("reviews", "{selector: {matchLabels: {app: reviews}}, "
                         "accessLogging: [{filter: {expression: 'response.code >= 400'}}], "
                         "tracing: [{randomSamplingPercentage: 100}]}"))
    assert r.spec == TelemetrySpec({"app": "reviews"}, AccessLogging(False, "response.code >= 400"),
                                   TelemetryTracing(100.0, None))
    [whole] = load(telemetry("ns", "{accessLogging: [{disabled: true}]}", "shop"))
    assert whole.spec == TelemetrySpec(None, AccessLogging(True, None), None)


@pytest.mark.parametrize(("spec", "expected"), [
    ("{accessLogging: [{filter: {expression: 'response.code >= \"4\"'}}]}",
     "spec.accessLogging[0].filter.expression: column 18: cannot compare an integer with a "
     "string in 'response.code >= \"4\"'"),
    ("{accessLogging: [{filter: {expression: 'response.code >'}}]}",
     "spec.accessLogging[0].filter.expression: column 16: expected an attribute"),
    ("{tracing: [{randomSamplingPercentage: 101}]}",
     "spec.tracing[0].randomSamplingPercentage: must be between 0 and 100, got 101"),
    ("{accessLogging: [{}, {disabled: true}]}",
     "spec.accessLogging[1]: one accessLogging entry only"),
    ("{accessLogging: [{providers: [{name: envoy}]}]}",
     "spec.accessLogging[0].providers: unknown field"),
    ("{selector: {matchLabels: {}}}", "spec.selector.matchLabels: at least one label"),
    ("{selector: {service: reviews}}", "spec.selector.service: unknown field"),
    ("{tracing: []}", "spec.tracing: at least one entry is required"),
])
def test_invalid_specs_are_refused_with_their_field(spec: str, expected: str) -> None:
    with pytest.raises(ValidationError) as caught:
        load(telemetry("t", spec))
    assert f"f1.yaml doc 1: {expected}" in str(caught.value)


def test_two_telemetries_at_one_level_are_refused() -> None:
    """One namespace-wide Telemetry per namespace, one per label selector (as PeerAuthentication):
    two would leave the settings to chance. Other namespaces and other selectors are fine."""
    issues = validate_set(load(
        telemetry("a", "{accessLogging: [{}]}"), telemetry("b", "{tracing: [{}]}"),
        telemetry("c", "{accessLogging: [{}]}", "shop"),
        telemetry("d", "{selector: {matchLabels: {app: x, version: v1}}, accessLogging: [{}]}"),
        telemetry("e", "{selector: {matchLabels: {version: v1, app: x}}, accessLogging: [{}]}"),
        telemetry("f", "{selector: {matchLabels: {app: x}}, accessLogging: [{}]}")))
    assert [(i.source, i.path) for i in issues] == [("f2.yaml", "spec.selector"),
                                                    ("f5.yaml", "spec.selector.matchLabels")]
    assert "already has a namespace-wide Telemetry" in issues[0].message


# -- precedence and snapshots -----------------------------------------------------------------

MESH = ("apiVersion: ami.mesh/v1alpha1\nkind: MeshConfig\nmetadata: {name: default}\n"
        "spec: {accessLog: true, tracing: {sampling: 0.01}}\n")
SIDECARS = {
    "web": ProxyInfo(name="web-1", service="web", namespace="shop", labels={"version": "v1"},
                     inbound="127.0.0.1:1001", ready=True),
    "reviews": ProxyInfo(name="reviews-1", service="reviews", namespace="shop",
                         labels={"version": "v2"}, inbound="127.0.0.1:1002", ready=True),
    "ratings": ProxyInfo(name="ratings-1", service="ratings", namespace="other",
                         labels={"version": "v1"}, inbound="127.0.0.1:1003", ready=True),
}


def snapshots(*texts: str) -> dict[str, Any]:
    builder = SnapshotBuilder(load(MESH, *texts), SIDECARS.values())
    return {name: builder.build(p) for name, p in SIDECARS.items()}


def test_no_telemetry_for_a_sidecar_leaves_its_snapshot_bytes_alone() -> None:
    """A Telemetry of another namespace, or one selecting other workloads, changes nothing in
    a sidecar's snapshot: the same bytes, the same version, no push."""
    before = snapshots()
    after = snapshots(telemetry("shop", "{accessLogging: [{disabled: true}]}", "shop"),
                      telemetry("v9", "{selector: {matchLabels: {version: v9}}, "
                                "tracing: [{randomSamplingPercentage: 50}]}", "other"))
    assert after["ratings"] == before["ratings"]
    assert b"telemetry" not in before["web"].data
    assert after["web"] != before["web"]


def effective_of(built: Any) -> Any:
    return json.loads(built.data).get("telemetry")


def test_workload_beats_namespace_beats_mesh() -> None:
    """Access logging: the most specific level with an entry decides, filter and all; each
    tracing field: the most specific level that sets it."""
    built = snapshots(
        telemetry("ns", "{accessLogging: [{filter: {expression: 'response.code >= 400'}}], "
                  "tracing: [{randomSamplingPercentage: 5, disableSpanReporting: true}]}",
                  "shop"),
        telemetry("reviews", "{selector: {matchLabels: {app: reviews}}, accessLogging: [{}], "
                  "tracing: [{randomSamplingPercentage: 100}]}", "shop"))
    assert effective_of(built["web"]) == {
        "accessLog": {"disabled": False, "filter": "response.code >= 400"},
        "tracing": {"sampling": 0.05, "disableSpanReporting": True}}
    assert effective_of(built["reviews"]) == {
        "accessLog": {"disabled": False},
        "tracing": {"sampling": 1.0, "disableSpanReporting": True}}
    assert effective_of(built["ratings"]) is None
    web = Snapshot.from_dict(json.loads(built["web"].data))
    reviews = Snapshot.from_dict(json.loads(built["reviews"].data))
    ratings = Snapshot.from_dict(json.loads(built["ratings"].data))
    assert web.access_log and web.telemetry is not None and web.telemetry.access_filter
    assert web.telemetry.access_filter(request(404)) and not web.telemetry.access_filter(
        request(200))
    assert reviews.access_log and reviews.telemetry is not None
    assert reviews.telemetry.access_filter is None and reviews.tracing_sampling == 1.0
    assert ratings.telemetry is None and ratings.access_log and ratings.tracing_sampling == 0.01


def test_a_selector_matches_every_label_and_app_is_the_service() -> None:
    built = snapshots(
        telemetry("v2", "{selector: {matchLabels: {app: reviews, version: v2}}, "
                  "accessLogging: [{disabled: true}]}", "shop"),
        telemetry("v1", "{selector: {matchLabels: {version: v1}}, "
                  "tracing: [{randomSamplingPercentage: 0}]}", "shop"))
    assert effective_of(built["reviews"]) == {"accessLog": {"disabled": True}}
    assert effective_of(built["web"]) == {"tracing": {"sampling": 0.0}}
    web = Snapshot.from_dict(json.loads(built["web"].data))
    assert web.tracing_sampling == 0.0 and web.access_log  # sampling off, the mesh's log on


def test_the_proxy_refuses_a_pushed_filter_outside_the_subset() -> None:
    """A snapshot (a newer control plane's, or a hand-written static file) with a filter this
    proxy cannot compile is NACKed with the column, not half applied."""
    with pytest.raises(ConfigError, match=r"telemetry.accessLog.filter: column 15: "):
        Snapshot.from_dict({"telemetry": {"accessLog": {"filter": "response.code ~ 1"}}})
    with pytest.raises(ConfigError, match=r"telemetry\.tracing\.sampling: expected 0 to 1"):
        Snapshot.from_dict({"telemetry": {"tracing": {"sampling": 50}}})


@pytest.mark.parametrize(("expression", "flags", "logged"), [
    ('response.flags != "-"', "upstream_connect_failure", True),
    ('response.flags != "-"', "-", False),
    ("response.code >= 400", "upstream_connect_failure", False),  # no response: code 0
    ('request.host == "db"', "-", True),
])
async def test_a_tcp_connection_line_goes_through_the_filter(expression: str, flags: str,
                                                            logged: bool) -> None:
    """A TCP connection's line is filtered as a request with no response (code 0), its reason
    word as response.flags and the service it asked for as request.host."""
    import io

    from proxy.metrics import RequestStats
    from proxy.tcprelay import TcpSession

    session = TcpSession(RequestStats(), True, "tcp_upstream", asyncio.get_running_loop())
    session.authority, session.flags = "db", flags
    session.log_out, session.log_filter = io.StringIO(), compile_filter(expression)
    session._log()
    assert bool(session.log_out.getvalue()) is logged


def test_check_says_which_of_overlapping_telemetries_decides_each_field() -> None:
    """Three workload-level Telemetries of shop select web-1: `a` (first by name) decides the
    sampling, which `c` sets too (unused: the warning says so); `b` sets only the access log,
    which applies (the warning says it applies too); ratings' namespace is not judged. What
    the warnings say is what web's snapshot gets."""
    from dataclasses import asdict

    from meshctl.observe.selectorchecks import telemetry_checks

    resources = load(
        telemetry("a", "{selector: {matchLabels: {app: web}}, "
                  "tracing: [{randomSamplingPercentage: 50}]}", "shop"),
        telemetry("b", "{selector: {matchLabels: {version: v1}}, accessLogging: [{}]}", "shop"),
        telemetry("c", "{selector: {matchLabels: {app: web, version: v1}}, "
                  "tracing: [{randomSamplingPercentage: 10}]}", "shop"),
        telemetry("d", "{selector: {matchLabels: {version: v1}}, accessLogging: [{}]}",
                  "other"))
    proxies = [asdict(p) for p in SIDECARS.values()]
    [group] = telemetry_checks(resources, proxies)
    assert group.title == "Telemetry"
    assert [(c.name, c.state, c.detail) for c in group.checks] == [
        ("Telemetry shop/a and shop/b", "warn", "both select web-1 (app=web and version=v1): "
         "a applies first (by name), they set different fields, so b's apply too"),
        ("Telemetry shop/a and shop/c", "warn", "both select web-1 (app=web and "
         "app=web,version=v1): a applies first (by name), c's "
         "tracing.randomSamplingPercentage is not used for them")]
    web = SnapshotBuilder([*load(MESH), *resources], SIDECARS.values()).build(SIDECARS["web"])
    assert effective_of(web) == {"accessLog": {"disabled": False}, "tracing": {"sampling": 0.5}}

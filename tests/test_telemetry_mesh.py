"""Telemetry end to end: a real control plane, sidecars in two namespaces (mTLS on) with their
apps, and an in-process OTLP collector. A namespace's Telemetry switches the access log of that
namespace only (the other's snapshot keeps its bytes), a filter logs the 404 and not the 200
(and sees request.path with its query, as Envoy's), a workload's Telemetry beats its
namespace's, 100% sampling for one service yields its traces while the others keep the mesh's
0, and the CLI lists, describes and deletes the kind."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.helpers_mesh import (
    MeshProcess,
    apply_yaml,
    http_get,
    http_json,
    meshctl,
    proxies,
    wait_for,
)
from tests.meshbuilder import Mesh
from tests.otlpreceiver import Receiver
from tests.resources import mesh_config

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    receiver = Receiver()
    receiver.start()
    with Mesh(tmp_path_factory.mktemp("telemetry-mesh")) as mesh:
        mesh.defer(receiver.stop)
        mesh.control_plane(mesh_config(accessLog=False, tracing={
            "sampling": 0, "otlpEndpoint": f"127.0.0.1:{receiver.port}"}))
        sidecars = {}
        for ns, service in (("shop", "web"), ("shop", "reviews"), ("other", "ratings")):
            app = mesh.backend(service)
            sidecars[service] = mesh.sidecar(service, app=app.info["address"], namespace=ns)
        yield {"cp": mesh.cp, "receiver": receiver, **sidecars}


def call(sidecar: MeshProcess, host: str, path: str = "/") -> int:
    """A request from the sidecar's app, through its outbound listener."""
    return http_get(f"http://{sidecar.info['outbound']}{path}", {"Host": host})[0]


def log_lines(sidecar: MeshProcess) -> list[dict[str, Any]]:
    """The access log lines (JSON objects with a listener) the sidecar wrote so far."""
    lines = []
    for text in sidecar.output().splitlines():
        if text.startswith("{"):
            line = json.loads(text)
            if "listener" in line:
                lines.append(line)
    return lines


def telemetry_of(sidecar: MeshProcess) -> Any:
    status, dump = http_json(f"http://{sidecar.info['admin']}/config_dump")
    assert status == 200, dump
    return dump["snapshot"]["telemetry"]


def requests_recorded(sidecar: MeshProcess) -> int:
    """Finished requests (metrics are recorded just before the access log decision)."""
    return int(http_json(f"http://{sidecar.info['admin']}/stats")[1]["requests"])


def config_version(mesh: dict[str, Any], sidecar: MeshProcess) -> str:
    [entry] = [p for p in proxies(mesh["cp"]) if p["name"] == sidecar.info["name"]]
    return str(entry["configVersion"])


@pytest.fixture
def applied(mesh: dict[str, Any]) -> Iterator[list[tuple[str, str]]]:
    """(namespace, name) of the Telemetries a test applies, deleted after it; each sidecar
    then waits until it has no Telemetry any more."""
    names: list[tuple[str, str]] = []
    yield names
    cp = mesh["cp"]
    for ns, name in names:
        status, body = http_json(f"{cp.info['api']}/api/v1/namespaces/{ns}/telemetries/{name}",
                                 "DELETE", token=cp.info["token"])
        assert status == 200, body
    for service in ("web", "reviews", "ratings"):
        wait_for(lambda s=service: telemetry_of(mesh[s]) is None, 20, f"{service} reverted")


def apply_telemetry(mesh: dict[str, Any], applied: list[tuple[str, str]], name: str,
                    namespace: str, spec: str) -> int:
    """Apply a Telemetry (deleted after the test); the store revision it made."""
    revision = apply_yaml(mesh["cp"], f"apiVersion: ami.mesh/v1alpha1\nkind: Telemetry\n"
                          f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n")
    applied.append((namespace, name))
    return revision


def acked_by_all(mesh: dict[str, Any], revision: int) -> None:
    """Until the control plane has every sidecar's ACK of a snapshot of ``revision`` or later
    (a sidecar runs a push, as its config_dump shows, before its ACK reaches the control
    plane, which until then lists it unsynced: `meshctl check` fails "every proxy synced")."""
    cp = mesh["cp"]
    status, body = http_json(f"{cp.info['api']}/api/v1/sync?storeVersion={revision}&timeout=20")
    assert status == 200 and body["synced"], body


def test_a_namespace_telemetry_logs_that_namespace_only(
        mesh: dict[str, Any], applied: list[tuple[str, str]]) -> None:
    web, reviews, ratings = mesh["web"], mesh["reviews"], mesh["ratings"]
    wait_for(lambda: call(web, "reviews") == 200, 20, "web reaches reviews")
    wait_for(lambda: call(ratings, "ratings") == 200, 20, "ratings reaches itself")
    ratings_version = config_version(mesh, ratings)
    apply_telemetry(mesh, applied, "logs", "shop", "{accessLogging: [{}]}")
    wait_for(lambda: telemetry_of(web) and telemetry_of(reviews), 20, "shop's sidecars pushed")
    assert http_json(f"http://{web.info['admin']}/stats")[1]["access_log"] is True
    assert call(web, "reviews", "/from-web") == 200
    wait_for(lambda: any(line["path"] == "/from-web" for line in log_lines(reviews)), 20,
             "reviews' inbound line")
    wait_for(lambda: any(line["path"] == "/from-web" for line in log_lines(web)), 20,
             "web's outbound line")
    # The other namespace: no Telemetry in its snapshot, whose bytes (version) are unchanged.
    assert telemetry_of(ratings) is None and config_version(mesh, ratings) == ratings_version
    assert http_json(f"http://{ratings.info['admin']}/stats")[1]["access_log"] is False
    before = requests_recorded(ratings)
    assert call(ratings, "ratings", "/from-ratings") == 200
    wait_for(lambda: requests_recorded(ratings) >= before + 2, 20, "ratings' two hops recorded")
    assert log_lines(ratings) == []


def test_a_filter_logs_the_404_and_not_the_200_and_a_workload_beats_its_namespace(
        mesh: dict[str, Any], applied: list[tuple[str, str]]) -> None:
    web, reviews = mesh["web"], mesh["reviews"]
    apply_telemetry(mesh, applied, "errors", "shop",
                    "{accessLogging: [{filter: {expression: 'response.code >= 400'}}]}")
    apply_telemetry(mesh, applied, "reviews-all", "shop",
                    "{selector: {matchLabels: {app: reviews}}, accessLogging: [{}]}")
    wait_for(lambda: (telemetry_of(web) or {}).get("filter_expression") == "response.code >= 400"
             and telemetry_of(reviews) and telemetry_of(reviews)["access_log"] is True
             and telemetry_of(reviews)["filter_expression"] is None, 20, "both pushed")
    before = requests_recorded(web)
    assert call(web, "reviews", "/filtered-ok") == 200
    wait_for(lambda: requests_recorded(web) > before, 20, "web recorded the 200")
    assert call(web, "nosuch", "/filtered-missing") == 404  # no_route, on web's outbound
    wait_for(lambda: any(line["path"] == "/filtered-missing" for line in log_lines(web)), 20,
             "web's 404 line")
    paths = [(line["path"], line["status"]) for line in log_lines(web)]
    assert ("/filtered-missing", 404) in paths and ("/filtered-ok", 200) not in paths
    # reviews: its own Telemetry (no filter) beats the namespace's: the 200 is logged
    wait_for(lambda: any(line["path"] == "/filtered-ok" and line["status"] == 200
                         for line in log_lines(reviews)), 20, "reviews' 200 line")


def test_a_filter_on_request_path_sees_the_query_as_envoys_does(
        mesh: dict[str, Any], applied: list[tuple[str, str]]) -> None:
    """Envoy's request.path is the :path, query included (request.url_path is without it):
    an Istio filter on a query parameter logs the requests that carry it."""
    web = mesh["web"]
    apply_telemetry(mesh, applied, "debug-calls", "shop",
                    "{selector: {matchLabels: {app: web}}, accessLogging: [{filter: "
                    "{expression: 'request.path.contains(\"debug=1\") && "
                    "request.url_path.startsWith(\"/dbg\")'}}]}")
    wait_for(lambda: "debug=1" in ((telemetry_of(web) or {}).get("filter_expression") or ""),
             20, "web pushed")
    before = requests_recorded(web)
    assert call(web, "reviews", "/dbg-plain") == 200
    assert call(web, "reviews", "/dbg-query?debug=1") == 200
    wait_for(lambda: requests_recorded(web) >= before + 2, 20, "web recorded both")
    wait_for(lambda: any(line["path"] == "/dbg-query" for line in log_lines(web)), 20,
             "web's line of the request with the query")
    assert [line["path"] for line in log_lines(web)
            if line["path"].startswith("/dbg")] == ["/dbg-query"]


def test_full_sampling_for_one_service_traces_it_and_not_the_others(
        mesh: dict[str, Any], applied: list[tuple[str, str]]) -> None:
    """reviews samples every request it starts a trace for; web keeps the mesh's 0: none of
    web's own requests start a trace (its spans appear only below reviews')."""
    web, reviews, receiver = mesh["web"], mesh["reviews"], mesh["receiver"]
    apply_telemetry(mesh, applied, "debug-reviews", "shop",
                    "{selector: {matchLabels: {app: reviews}}, "
                    "tracing: [{randomSamplingPercentage: 100}]}")
    wait_for(lambda: (telemetry_of(reviews) or {}).get("tracing_sampling") == 1.0, 20,
             "reviews pushed")
    assert telemetry_of(web) is None
    for i in range(5):
        assert call(web, "reviews", f"/web-{i}") == 200  # web decides (0%): not sampled
    for i in range(5):
        assert call(reviews, "web", f"/reviews-{i}") == 200  # reviews decides (100%)

    def web_spans_of_reviews_traces() -> bool:
        with receiver.lock:
            spans = list(receiver.spans)
        reviews_traces = {s.trace_id for svc, s in spans if svc == "reviews"}
        known = {s.span_id for _, s in spans}
        # every parent arrived too: a child's span may come in an earlier batch than its parent's
        whole = all(s.parent_span_id in known or svc == "reviews" for svc, s in spans)
        return whole and len(reviews_traces) >= 5 and len(
            {s.trace_id for svc, s in spans if svc == "web" and s.trace_id in reviews_traces}
        ) >= 5

    # web's exporter sends its spans in order: once those of the later (reviews-started)
    # requests arrived, any of its own earlier requests would have too.
    wait_for(web_spans_of_reviews_traces, 30, "spans of reviews' five traces from both")
    with receiver.lock:
        spans = list(receiver.spans)
    known = {s.span_id for _, s in spans}
    roots = [(svc, s.attributes) for svc, s in spans if s.parent_span_id not in known]
    assert {svc for svc, _ in roots} == {"reviews"}
    assert len({s.trace_id for _, s in spans}) == 5


def test_invalid_expression_is_refused_with_its_column_and_nothing_applies(
        mesh: dict[str, Any]) -> None:
    cp = mesh["cp"]
    status, body = http_json(cp.info["api"] + "/api/v1/apply", "POST",
                             "apiVersion: ami.mesh/v1alpha1\nkind: Telemetry\n"
                             "metadata: {name: bad, namespace: shop}\n"
                             "spec: {accessLogging: [{filter: {expression: "
                             "'response.code >= 400 && request.path.matches(\"x\")'}}]}\n",
                             token=cp.info["token"], content_type="application/yaml")
    assert status in (400, 422), body
    assert ("spec.accessLogging[0].filter.expression: column 38: expected startsWith, "
            "endsWith or contains, got 'matches'") in json.dumps(body)
    assert http_json(cp.info["api"] + "/api/v1/telemetries")[1]["items"] == []


def test_the_cli_lists_describes_and_deletes_telemetry(
        mesh: dict[str, Any], applied: list[tuple[str, str]]) -> None:
    apply_telemetry(mesh, applied, "errors", "shop",
                    "{selector: {matchLabels: {app: web}}, accessLogging: [{filter: "
                    "{expression: 'response.code >= 500'}}], "
                    "tracing: [{randomSamplingPercentage: 50}]}")
    listed = meshctl(mesh["cp"], "get", "tel", "-n", "shop")
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()[:2]
    assert header.split()[:4] == ["NAME", "SELECTOR", "ACCESS-LOG", "SAMPLING"]
    assert row.split()[:2] == ["errors", "app=web"] and "on if response.code >= 500" in row
    assert "50%" in row
    described = meshctl(mesh["cp"], "describe", "telemetry", "errors", "-n", "shop")
    assert described.returncode == 0 and "response.code >= 500" in described.stdout
    deleted = meshctl(mesh["cp"], "delete", "telemetries", "errors", "-n", "shop")
    assert deleted.returncode == 0, deleted.stderr
    applied.clear()
    wait_for(lambda: telemetry_of(mesh["web"]) is None, 20, "web reverted")


def test_check_warns_of_two_telemetries_selecting_one_sidecar(
        mesh: dict[str, Any], applied: list[tuple[str, str]]) -> None:
    """shop's `a-web` (app=web) and `b-v1` (version=v1) both select web: a-web, the first by
    name, decides the access log (off) and b-v1 the sampling a-web leaves unset (100%), as
    `meshctl check` says, naming both; reviews (b-v1 alone) is named by no warning."""
    web, reviews = mesh["web"], mesh["reviews"]
    apply_telemetry(mesh, applied, "a-web", "shop",
                    "{selector: {matchLabels: {app: web}}, accessLogging: [{disabled: true}]}")
    revision = apply_telemetry(mesh, applied, "b-v1", "shop",
                               "{selector: {matchLabels: {version: v1}}, accessLogging: [{}], "
                               "tracing: [{randomSamplingPercentage: 100}]}")
    wait_for(lambda: (telemetry_of(web) or {}).get("tracing_sampling") == 1.0
             and (telemetry_of(reviews) or {}).get("access_log") is True, 20, "both pushed")
    assert telemetry_of(web)["access_log"] is False  # a-web's, not b-v1's
    acked_by_all(mesh, revision)  # check's "every proxy synced" reads the ACKs
    done = meshctl(mesh["cp"], "check")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    group = lines.index("Telemetry")
    assert lines[group + 1:group + 3] == [
        f"  ‼ Telemetry shop/a-web and shop/b-v1: both select {web.info['name']} (app=web and "
        "version=v1): a-web applies first (by name), b-v1's accessLogging is not used for them",
        "    hint: give them selectors that differ in a label's value (e.g. version=v1 and "
        "version=v2), or merge them into one"]
    assert reviews.info["name"] not in done.stdout.split("Telemetry\n", 1)[1]

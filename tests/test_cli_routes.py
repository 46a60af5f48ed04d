"""`meshctl routes` against a real mesh: `meshctl serve`, control-plane-mode sidecars (reviews
v1 and v2, productpage calling them) and real HTTP through them. The rows per named rule and
the `[unnamed]` rest, in JSON, table and wide form; the messages for a service without a
Route, with a Route naming no rule, and an unknown service; a push that unnames or renames a
rule drops its series."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import meshbuilder
from tests.helpers_mesh import http_get, wait_for
from tests.proxyharness import metric_value
from tests.resources import destination_policy, documents, mesh_config

pytestmark = pytest.mark.timeout(180)
MESH = documents(mesh_config(mtls="DISABLE"), destination_policy("reviews"))


def route(jason: str = "jason", idle: str = "idle") -> str:
    """The reviews Route (its name differs from its host: the `route` label comes from the
    snapshot's name); a rule name "" leaves that rule unnamed."""
    def rule(name: str, user: str, subset: str) -> dict[str, Any]:
        return {**({"name": name} if name else {}), "backends": [{"subset": subset}],
                "matches": [{"headers": {"end-user": {"exact": user}}}]}

    return yaml.safe_dump({
        "apiVersion": "ami.mesh/v1alpha1", "kind": "Route",
        "metadata": {"name": "reviews-by-user"},
        "spec": {"host": "reviews", "rules": [rule(jason, "jason", "v2"),
                                              rule(idle, "nobody", "v1"),
                                              {"backends": [{"subset": "v1"}]}]}})


class Mesh(meshbuilder.Mesh):
    """reviews v1 and v2 behind sidecars, productpage's sidecar calling them, mTLS off."""

    def build(self) -> Mesh:
        self.control_plane(MESH, warmup=0.0)
        self.service("reviews", "v1", "v2")
        self.front = self.sidecar("productpage")
        return self

    def call(self, user: str | None) -> bytes:
        status, body = self.get(self.front, "reviews",
                                headers={"end-user": user} if user else None)
        assert status == 200
        return body

    def front_text(self) -> str:
        return http_get(f"http://{self.front.info['admin']}/metrics")[1].decode()

    def front_metric(self, name: str, **labels: str) -> float:
        return metric_value(self.front_text(), name, **labels)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(Path(tmp_path_factory.mktemp("cliroutes"))) as mesh:
        mesh.build().wait_synced(20)
        mesh.apply_synced(route())
        yield mesh


def _rows(mesh: Mesh) -> dict[str, Any]:
    out = mesh.meshctl("routes", "reviews", "-o", "json")
    assert out.returncode == 0, out.stderr
    body: dict[str, Any] = json.loads(out.stdout)
    return body


def test_rows_per_named_rule_and_the_rest(mesh: Mesh) -> None:
    """jason's requests go to v2 by the named rule `jason`, the others to v1 by the unnamed
    default: one row each (the `idle` rule has a row with no traffic), the same rows in the
    table, and in wide form each row's share and the rule's backends."""
    def both_counted() -> dict[str, Any] | None:
        assert mesh.call("jason") == b"reviews-v2"
        assert mesh.call(None) == b"reviews-v1"
        body = _rows(mesh)
        rows = {(r["route"], r["rule"]): r for r in body["rows"]}
        jason = rows.get(("default/reviews-by-user", "jason"))
        rest = rows.get((None, "[unnamed]"))
        return body if jason and rest and jason["rps"] > 0 and rest["rps"] > 0 else None

    body = wait_for(both_counted, 60, "both rows in meshctl routes", interval=0.5)
    assert body["service"] == "reviews" and body["namespace"] == "default"
    assert body["message"] is None
    assert body["routes"] == [{"route": "default/reviews-by-user", "rules": ["jason", "idle"],
                               "unnamedRules": 1}]
    assert [(r["route"], r["rule"]) for r in body["rows"]] == [
        ("default/reviews-by-user", "idle"), ("default/reviews-by-user", "jason"),
        (None, "[unnamed]")]
    idle, jason, rest = body["rows"]
    assert idle["rps"] == 0 and idle["successRate"] is None and idle["p50"] is None
    for row in (jason, rest):
        assert row["successRate"] == 1.0 and row["p50"] is not None
        assert set(row) == {"route", "rule", "rps", "successRate", "p50", "p95", "p99",
                            "share", "backends"}
    assert (jason["backends"], idle["backends"], rest["backends"]) == ("v2=100", "v1=100", "")
    assert abs(jason["share"] + rest["share"] - 1.0) < 1e-3
    # the sidecar labelled the series with the Route's name as the control plane sent it
    assert mesh.front_metric("ami_route_requests_total", route="default/reviews-by-user",
                             rule="jason", destination_service="reviews") > 0

    table = mesh.meshctl("routes", "reviews")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.strip().splitlines()
    assert lines[0].split() == ["ROUTE", "RULE", "SUCCESS", "RPS", "P50", "P95", "P99"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["default/reviews-by-user", "idle"], ["default/reviews-by-user", "jason"],
        ["-", "[unnamed]"]]
    wide = mesh.meshctl("routes", "reviews", "-o", "wide", "--window", "1m")
    assert wide.returncode == 0, wide.stderr
    head, *rows = wide.stdout.strip().splitlines()
    assert head.split()[-2:] == ["SHARE", "BACKENDS"]
    assert rows[1].split()[-1] == "v2=100" and rows[2].split()[-1] == "-"


def test_service_without_route_or_named_rule_and_unknown_service(mesh: Mesh) -> None:
    """productpage has no Route, then a Route naming no rule: each says so (exit 0, the
    JSON has the message and the `[unnamed]` row); a service the mesh does not know is an
    error."""
    out = mesh.meshctl("routes", "productpage")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("no Route for service productpage in namespace default: "
                                  "its requests are all in `meshctl stat productpage`")
    mesh.apply_synced("apiVersion: ami.mesh/v1alpha1\nkind: Route\n"
                      "metadata: {name: productpage}\n"
                      "spec: {host: productpage, rules: [{backends: [{}]}]}\n")
    out = mesh.meshctl("routes", "productpage", "-o", "json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["message"].startswith("Route default/productpage names none of its rules")
    assert [r["rule"] for r in body["rows"]] == ["[unnamed]"]
    assert "names none of its rules" in mesh.meshctl("routes", "productpage").stdout
    missing = mesh.meshctl("routes", "nosuch")
    assert missing.returncode != 0
    assert "no service nosuch in namespace default" in missing.stderr


def test_unnaming_the_rules_drops_their_series_and_naming_resumes_counting(
        mesh: Mesh) -> None:
    """A push leaving no rule named: the sidecar stops counting per rule and stops exporting
    the rules' series at that push (no ami_route_* family left), while the service metrics go
    on; named again, the rule counts from 0 (a new series, as after a restart)."""
    def served() -> float:
        return mesh.front_metric("ami_requests_total", reporter="source",
                                 destination_service="reviews")

    mesh.call("jason")  # (whichever test ran before: one of jason's is counted)
    assert mesh.front_metric("ami_route_requests_total", rule="jason") > 0
    mesh.apply_synced(route("", ""))
    assert "ami_route_" not in mesh.front_text()
    count = served()
    for _ in range(3):
        assert mesh.call("jason") == b"reviews-v2"
    assert served() == count + 3
    assert "ami_route_" not in mesh.front_text()
    mesh.apply_synced(route())
    for _ in range(2):
        assert mesh.call("jason") == b"reviews-v2"
    assert mesh.front_metric("ami_route_requests_total", rule="jason") == 2


def test_renamed_rule_drops_the_old_series_at_the_push(mesh: Mesh) -> None:
    """Renaming a rule: the push that renames it removes the old name's series from the
    sidecar's /metrics (its last values were scraped already); the new name counts anew, and
    a rule the push kept keeps its series."""
    mesh.apply_synced(route())
    mesh.call("jason")
    mesh.call("nobody")
    idle = mesh.front_metric("ami_route_requests_total", rule="idle")
    assert idle > 0 and mesh.front_metric("ami_route_requests_total", rule="jason") > 0
    mesh.apply_synced(route(jason="jason-v2"))
    assert 'rule="jason"' not in mesh.front_text()
    assert mesh.call("jason") == b"reviews-v2"
    assert mesh.front_metric("ami_route_requests_total", rule="jason-v2") == 1
    assert mesh.front_metric("ami_route_requests_total", rule="idle") == idle
    assert 'rule="jason"' not in mesh.front_text()

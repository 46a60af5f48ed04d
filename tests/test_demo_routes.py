"""Bookinfo scenario files: valid on top of the default set, documented, doing what they say."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.api.resources import Resource, load_path, validate_set
from meshctl.controlplane.translated import origin_of

ROUTES = Path(__file__).resolve().parent.parent / "sample_apps" / "bookinfo" / "routes"
SCENARIOS = ("all-v1", "reviews-jason-v2", "reviews-50-v3", "reviews-v3", "ratings-jason-delay",
             "ratings-jason-delay-v3", "ratings-jason-abort", "reviews-timeout",
             "circuit-breaker", "mirror", "canary-reviews-v3")


def overlay(*paths: Path) -> dict[tuple[str, str, str], Resource]:
    """Apply files in order: a later object replaces an earlier one of the same kind and name."""
    objects: dict[tuple[str, str, str], Resource] = {}
    for path in paths:
        objects.update({r.key: r for r in load_path(path)})
    return objects


def specs(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    docs = yaml.safe_load_all((ROUTES / f"{name}.yaml").read_text())
    return {(d["kind"], d["metadata"]["name"]): d["spec"] for d in docs}


def test_default_set_is_valid_and_complete() -> None:
    """The default set validates and holds the mesh config, gateway, 4 policies and 4 routes."""
    resources = load_path(ROUTES / "default")
    assert validate_set(resources) == []
    kinds = sorted(r.kind for r in resources)
    assert kinds == ["DestinationPolicy"] * 4 + ["Gateway", "MeshConfig"] + ["Route"] * 4


def test_default_reviews_route_is_ready_for_a_99_1_shift() -> None:
    """reviews starts all on v1 with v2 listed second, so `shift reviews 99/1` means v1=99, v2=1."""
    docs = {d["metadata"]["name"]: d for d in
            yaml.safe_load_all((ROUTES / "default" / "routes.yaml").read_text())}
    assert docs["reviews"]["spec"]["rules"] == [
        {"backends": [{"subset": "v1", "weight": 100}, {"subset": "v2", "weight": 0}]}]


def test_every_scenario_file_exists_and_no_other() -> None:
    """One file per scenario of bookinfo.md, named after it."""
    assert sorted(p.stem for p in ROUTES.glob("*.yaml")) == sorted(SCENARIOS)


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_is_valid_applied_on_the_default_set(name: str) -> None:
    """Applying the file to the running default set leaves a valid configuration."""
    objects = overlay(ROUTES / "default", ROUTES / f"{name}.yaml")
    assert [str(i) for i in validate_set(objects.values())] == []


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_has_a_header_saying_what_to_expect(name: str) -> None:
    """Each file opens with a comment naming the scenario and what the user should see."""
    head = (ROUTES / f"{name}.yaml").read_text().split("apiVersion", 1)[0]
    assert head.startswith("# Scenario ")
    assert "see" in head.lower()


@pytest.mark.parametrize("name", SCENARIOS)
def test_all_v1_undoes_every_scenario(name: str) -> None:
    """After any scenario, all-v1.yaml brings every route and policy back to the default's
    (a Canary stays, to be deleted: it only ever writes the reviews Route's weights)."""
    after = overlay(ROUTES / "default", ROUTES / f"{name}.yaml", ROUTES / "all-v1.yaml")
    assert {k: r for k, r in after.items() if r.kind != "Canary"} == overlay(ROUTES / "default")


def test_the_declared_canary_steps_v1_to_v3_in_reach_of_the_demo_traffic() -> None:
    """reviews v1 -> v3 by 25 every 10 s; 5 requests judge a window: at 25% of the demo's
    ~3 loads/s, v3 gets ~7 a window."""
    spec = specs("canary-reviews-v3")[("Canary", "reviews-v3")]
    assert (spec["service"], spec["stable"], spec["canary"]) == ("reviews", "v1", "v3")
    assert (spec["stepWeight"], spec["interval"]) == (25, "10s")
    assert spec["thresholds"]["minRequests"] == 5


def test_jason_scenarios_match_end_user_jason() -> None:
    """jason-to-v2, delay and abort route on the `end-user: jason` header set by productpage."""
    jason = {"headers": {"end-user": {"exact": "jason"}}}
    assert specs("reviews-jason-v2")[("Route", "reviews")]["rules"][0]["matches"] == [jason]
    delay = specs("ratings-jason-delay")[("Route", "ratings")]["rules"][0]
    assert delay["matches"] == [jason]
    assert delay["fault"] == {"delay": {"fixedDelay": "7s", "percent": 100}}
    fixed = specs("ratings-jason-delay-v3")
    assert fixed[("Route", "reviews")]["rules"][0]["backends"] == [{"subset": "v3"}]
    fixed_delay = fixed[("Route", "ratings")]["rules"][0]
    assert fixed_delay["matches"] == [jason]
    # 2 s fits in reviews v3's 2.5 s for ratings and productpage's 3 s for reviews
    assert fixed_delay["fault"] == {"delay": {"fixedDelay": "2s", "percent": 100}}
    abort = specs("ratings-jason-abort")[("Route", "ratings")]["rules"][0]
    assert abort["fault"] == {"abort": {"httpStatus": 500, "percent": 100}}


def test_timeout_breaker_and_mirror_settings() -> None:
    """reviews timeout 0.5 s with ratings +2 s; breaker 1/1/1 5xx; mirror 100% to v2."""
    timeout = specs("reviews-timeout")
    assert timeout[("Route", "reviews")]["rules"][0]["timeout"] == "0.5s"
    assert timeout[("Route", "ratings")]["rules"][0]["fault"]["delay"]["fixedDelay"] == "2s"
    breaker = specs("circuit-breaker")[("DestinationPolicy", "productpage")]
    assert breaker["connectionPool"]["maxConnections"] == 1
    assert breaker["connectionPool"]["maxPendingRequests"] == 1
    assert breaker["outlierDetection"]["consecutive5xxErrors"] == 1
    mirror = specs("mirror")[("Route", "reviews")]["rules"][0]
    assert mirror["backends"] == [{"subset": "v1"}]
    assert mirror["mirror"] == {"subset": "v2", "percent": 100}


ISTIO = ROUTES.parent / "istio"
ISTIO_TASKS = ("virtual-service-reviews-test-v2", "virtual-service-reviews-50-v3",
               "virtual-service-reviews-v3", "virtual-service-ratings-test-delay",
               "virtual-service-ratings-test-abort")


def test_the_istio_start_is_the_default_start() -> None:
    """`demo up --istio`'s set, Istio YAML, makes the default set's objects: the same
    subsets and routes (but reviews' v2 at weight 0, there for `shift 99/1`), and a gateway
    sending the same paths to productpage."""
    def by_key(objects: dict[tuple[str, str, str], Resource]) -> dict[Any, Any]:
        return {key: r.spec for key, r in objects.items()
                if r.kind not in ("MeshConfig", "Gateway")}

    istio_set, ami_set = overlay(ISTIO / "default"), overlay(ROUTES / "default")
    istio, ami = by_key(istio_set), by_key(ami_set)
    reviews = ("Route", "default", "reviews")
    assert {k: v for k, v in istio.items() if k != reviews} == {
        k: v for k, v in ami.items() if k != reviews}
    assert [b.subset for b in istio[reviews].rules[0].backends] == ["v1"]
    assert all(origin_of(r) for r in istio_set.values())
    [ami_entry] = ami_set[("Gateway", "default", "bookinfo")].spec.rules
    bound = istio_set[("Gateway", "default", "bookinfo-gateway.bookinfo")].spec
    assert bound.gateway == "bookinfo-gateway"
    [entry] = bound.rules
    assert entry.matches == ami_entry.matches and entry.services == ("productpage",)


def test_every_istio_task_file_is_listed() -> None:
    assert sorted(p.stem for p in ISTIO.glob("*.yaml")) == sorted(ISTIO_TASKS)


@pytest.mark.parametrize("name", ISTIO_TASKS)
def test_istio_task_is_valid_on_the_istio_start_and_all_v1_undoes_it(name: str) -> None:
    """Each Istio task file applies on `demo up --istio`'s set, and its
    virtual-service-all-v1.yaml brings the set back."""
    objects = overlay(ISTIO / "default", ISTIO / f"{name}.yaml")
    assert [str(i) for i in validate_set(objects.values())] == []
    assert objects != overlay(ISTIO / "default")
    undone = overlay(ISTIO / "default", ISTIO / f"{name}.yaml",
                     ISTIO / "default" / "virtual-service-all-v1.yaml")
    assert undone == overlay(ISTIO / "default")

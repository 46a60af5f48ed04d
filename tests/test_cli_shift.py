"""meshctl shift: weight parsing, refusals that change nothing, conflicts, and the ACK wait."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.api.resources import Resource, parse_document
from meshctl.commands.shift import ShiftRefused, Weights, parse_weights, plan_shift
from meshctl.controlplane.memstore import MemStore
from meshctl.controlplane.store import StoredObject
from tests.resources import destination_policy, documents
from tests.test_cli_support import (
    POLICY,
    ControlPlane,
    FakeSync,
    control_plane,
    reviews_route,
    write,
)
from tests.test_cli_support import token as token  # the autouse fixture: AMI_TOKEN


@pytest.fixture
def sync() -> FakeSync:
    return FakeSync()


@pytest.fixture
async def cp(sync: FakeSync, tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """Control plane holding reviews' policy (v1, v2, v3) and route (jason rule, v1 100)."""
    async with control_plane(MemStore(), [sync.route()]) as plane:
        await _apply(plane, tmp_path, documents(POLICY, reviews_route(100, 0)))
        yield plane


async def _apply(cp: ControlPlane, tmp_path: Path, text: str) -> None:
    code, _, err = await cp.meshctl("apply", "-f", str(write(tmp_path / "mesh.yaml", text)))
    assert code == 0, err


async def _backends(cp: ControlPlane, rule: int = 1) -> list[dict[str, Any]]:
    stored = await cp.store.get("Route", "default", "reviews")
    assert stored is not None
    return list(stored.resource.raw["spec"]["rules"][rule]["backends"])


async def _version(cp: ControlPlane) -> int:
    stored = await cp.store.get("Route", "default", "reviews")
    assert stored is not None
    return stored.resource_version


@pytest.mark.parametrize(("text", "message"), [
    ("99/2", "weights sum to 101, must be 100"),
    ("v1=90,v3=11", "weights sum to 101, must be 100"),
    ("v1=90,v1=10", "subset 'v1' is given twice"),
    ("90:10", "cannot read '90:10': expected weights like 99/1 or v1=90,v3=10"),
    ("v1=ninety", "cannot read 'v1=ninety': expected SUBSET=WEIGHT like v1=90"),
    ("101/-1", "cannot read '101/-1': expected weights like 99/1 or v1=90,v3=10"),
])
def test_parse_weights_refuses(text: str, message: str) -> None:
    """Malformed weights and sums other than 100 are refused with the reason."""
    with pytest.raises(ShiftRefused) as err:
        parse_weights(text)
    assert str(err.value) == message


def test_parse_weights_forms() -> None:
    """Positional weights keep their order; named ones keep their names."""
    assert parse_weights("99/1") == Weights(positional=(99, 1))
    assert parse_weights("100") == Weights(positional=(100,))
    assert parse_weights("v1=90, v3=10") == Weights(named=(("v1", 90), ("v3", 10)))


def test_plan_keeps_zero_weights_and_other_services() -> None:
    """Unnamed backends drop to weight 0 but stay; another service's backend is service/subset."""
    route: dict[str, Any] = {"spec": {"host": "reviews", "rules": [{"backends": [
        {"subset": "v1", "weight": 50}, {"service": "canary", "subset": "v2", "weight": 50}]}]}}
    plan = plan_shift(route, ["v1", "v3"], parse_weights("v3=100"))
    assert plan.split == (("v1", 0), ("canary/v2", 0), ("v3", 100))
    assert route["spec"]["rules"][0]["backends"][0]["weight"] == 50  # input left untouched


async def test_positional_shift_applies_and_waits(cp: ControlPlane, sync: FakeSync) -> None:
    """99/1 re-weights the last rule in declared order and waits on the new store version."""
    code, out, err = await cp.meshctl("shift", "reviews", "99/1", "--timeout", "5")
    assert (code, err) == (0, "")
    assert out == "reviews: v1 99% / v2 1% — applied, 7 proxies synced in 43 ms\n"
    assert await _backends(cp) == [{"subset": "v1", "weight": 99}, {"subset": "v2", "weight": 1}]
    assert await _backends(cp, rule=0) == [{"subset": "v2"}]  # the jason rule is untouched
    assert sync.queries == [{"storeVersion": str(await _version(cp)), "timeout": "5"}]


async def test_named_shift_adds_policy_subset(cp: ControlPlane) -> None:
    """v1=90,v3=10 adds v3 (defined by the policy) and sets the unnamed v2 to 0."""
    code, out, _ = await cp.meshctl("shift", "reviews", "v1=90,v3=10")
    assert code == 0 and out.startswith("reviews: v1 90% / v2 0% / v3 10% — applied")
    assert await _backends(cp) == [{"subset": "v1", "weight": 90}, {"subset": "v2", "weight": 0},
                                   {"subset": "v3", "weight": 10}]


async def test_rule_option_selects_named_rule(cp: ControlPlane) -> None:
    """--rule re-weights that rule; an unknown rule name is refused."""
    assert (await cp.meshctl("shift", "reviews", "v2=50,v3=50", "--rule", "jason"))[0] == 0
    assert await _backends(cp, rule=0) == [{"subset": "v2", "weight": 50},
                                           {"subset": "v3", "weight": 50}]
    assert await cp.meshctl("shift", "reviews", "100", "--rule", "bob") == (
        1, "", "error: the route of reviews has no rule named 'bob' (named: jason); "
               "nothing changed\n")


@pytest.mark.parametrize(("argv", "message"), [
    (("reviews", "99/2"), "weights sum to 101, must be 100"),
    (("reviews", "v1=90,v9=10"), "unknown subset 'v9' for reviews (known: v1, v2, v3)"),
    (("reviews", "80/10/10"), "3 weights given but the default (last) rule of reviews has 2 "
                              "backends (v1, v2); give one weight per backend in that order, "
                              "or name them like v1=90,v2=10"),
    (("ratings", "50/50"), "no Route for service ratings in namespace default; create one "
                           "with meshctl apply"),
])
async def test_refusals_change_nothing(cp: ControlPlane, sync: FakeSync,
                                       argv: tuple[str, str], message: str) -> None:
    """A refused shift exits 1 with the reason and neither writes nor waits."""
    before = await _version(cp)
    assert await cp.meshctl("shift", *argv) == (1, "", f"error: {message}; nothing changed\n")
    assert await _version(cp) == before and sync.queries == []


async def test_same_weights_are_unchanged(cp: ControlPlane, sync: FakeSync) -> None:
    """Shifting to the current weights writes nothing and waits on the current version."""
    before = await _version(cp)
    code, out, _ = await cp.meshctl("shift", "reviews", "100/0")
    # no write to time: no duration (the sync answer's figure is about an older write)
    assert (code, out) == (0, "reviews: v1 100% / v2 0% — unchanged, 7 proxies in sync\n")
    assert await _version(cp) == before
    assert sync.queries[0]["storeVersion"] == str(before)


async def test_timeout_names_lagging_proxies(cp: ControlPlane, sync: FakeSync) -> None:
    """When the sync wait times out, exit 1 and name the proxies that did not ACK."""
    sync.lagging = [{"name": "reviews-v2-1", "nack": None},
                    {"name": "productpage-v1-1", "nack": "routes[0]: bad"}]
    code, out, err = await cp.meshctl("shift", "reviews", "50/50", "--timeout", "2")
    assert (code, out) == (1, "")
    assert err == ("reviews: v1 50% / v2 50% — applied, but 2 not synced after 2 s: "
                   "reviews-v2-1, productpage-v1-1 (NACK: routes[0]: bad)\n")


async def test_without_sync_endpoint_cannot_confirm(tmp_path: Path) -> None:
    """A control plane without /api/v1/sync: the shift is applied but exits 1 saying so."""
    async with control_plane(MemStore()) as cp:
        await _apply(cp, tmp_path, documents(POLICY, reviews_route(100, 0)))
        code, _, err = await cp.meshctl("shift", "reviews", "50/50")
        assert code == 1 and "cannot confirm the proxies synced" in err
        assert (await cp.meshctl("shift", "reviews", "40/60", "--no-wait"))[:2] == (
            0, "reviews: v1 40% / v2 60% — applied\n")


class RacingStore(MemStore):
    """Before each of the first ``races`` route updates, another writer changes the route."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races

    async def update(self, obj: Resource, expected_version: int | str | None = None
                     ) -> StoredObject:
        if obj.kind == "Route" and self.races > 0:
            self.races -= 1
            current = await self.get(*obj.key)
            assert current is not None
            doc = current.to_dict()
            doc["metadata"]["labels"] = {"touched": str(self.races)}
            await super().update(parse_document(doc))
        return await super().update(obj, expected_version)


async def test_conflict_rereads_and_retries(tmp_path: Path) -> None:
    """A concurrent write makes the PUT 409; the shift re-reads, keeps that write, retries."""
    sync = FakeSync()
    async with control_plane(RacingStore(races=2), [sync.route()]) as cp:
        await _apply(cp, tmp_path, documents(POLICY, reviews_route(100, 0)))
        assert (await cp.meshctl("shift", "reviews", "70/30"))[0] == 0
        stored = await cp.store.get("Route", "default", "reviews")
        assert stored is not None and dict(stored.resource.labels) == {"touched": "0"}
        assert await _backends(cp) == [{"subset": "v1", "weight": 70},
                                       {"subset": "v2", "weight": 30}]
        assert sync.queries[0]["storeVersion"] == str(stored.resource_version)


async def test_conflict_gives_up_after_three_retries(tmp_path: Path) -> None:
    """Four conflicting writes in a row: exit 1 with the conflict; the weights are unchanged."""
    store = RacingStore(races=0)
    async with control_plane(store, [FakeSync().route()]) as cp:
        await _apply(cp, tmp_path, documents(POLICY, reviews_route(100, 0)))
        store.races = 4
        code, _, err = await cp.meshctl("shift", "reviews", "70/30")
        assert code == 1 and "resourceVersion" in err and "is stale" in err
        assert await _backends(cp) == [{"subset": "v1", "weight": 100},
                                       {"subset": "v2", "weight": 0}]


@pytest.mark.parametrize("spelling", ["reviews.default", "reviews.default.svc.cluster.local"])
async def test_a_route_and_policy_spelling_the_host_otherwise_are_found(
        sync: FakeSync, tmp_path: Path, spelling: str) -> None:
    """A Route and DestinationPolicy written with the namespace's long form of the name are
    the service's: `meshctl shift reviews` finds them, and `shift reviews.default` too."""
    text = documents(destination_policy(spelling, ("v1", "v2", "v3"), name="reviews"),
                     reviews_route(100, 0, host=spelling))
    async with control_plane(MemStore(), [sync.route()]) as plane:
        await _apply(plane, tmp_path, text)
        code, out, err = await plane.meshctl("shift", "reviews", "v1=90,v3=10")
        assert (code, err) == (0, ""), out
        assert await _backends(plane) == [{"subset": "v1", "weight": 90},
                                          {"subset": "v2", "weight": 0},
                                          {"subset": "v3", "weight": 10}]
        code, _, err = await plane.meshctl("shift", "reviews.default", "v1=50,v2=50")
        assert (code, err) == (0, "")
        assert await _backends(plane) == [{"subset": "v1", "weight": 50},
                                          {"subset": "v2", "weight": 50},
                                          {"subset": "v3", "weight": 0}]

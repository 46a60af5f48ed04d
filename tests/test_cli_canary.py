"""meshctl canary against the real HTTP API (in-process, MemStore) with stat and sync faked at
the seam: which row is the canary, the widened window, and errors mid-run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from meshctl.controlplane.memstore import MemStore
from tests.resources import destination_policy, documents, header_rule, route, split
from tests.test_cli_support import ControlPlane, FakeSync, control_plane, write
from tests.test_cli_support import token as token  # the autouse fixture: AMI_TOKEN

STABLE = split({"stable": 100})


def shop(*rules: dict[str, Any]) -> str:
    """shop's reviews: subsets stable (v1) and canary (v3-rc), ``rules`` then all to stable."""
    return documents(
        destination_policy("reviews", ({"name": "stable", "labels": {"version": "v1"}},
                                       {"name": "canary", "labels": {"version": "v3-rc"}}),
                           namespace="shop"),
        route("reviews", rules=[*rules, STABLE], namespace="shop"))


SHOP = shop()
FAST = ("-n", "shop", "--from", "stable", "--to", "canary", "--step", "50", "--interval", "1ms",
        "--min-requests", "1")


@dataclass
class FakeStat:
    """``GET /api/v1/stat``: fixed rows at any window; records the windows asked for."""

    rows: list[dict[str, Any]]
    scrape_interval: float = 0.001
    windows: list[str] = field(default_factory=list)

    def route(self) -> web.RouteDef:
        async def handle(request: web.Request) -> web.Response:
            self.windows.append(request.query["window"])
            return web.json_response({"window": float(request.query["window"]),
                                      "scrapeInterval": self.scrape_interval,
                                      "rows": self.rows})
        return web.get("/api/v1/stat", handle)


def row(service: str, version: str, success: float) -> dict[str, Any]:
    return {"service": service, "version": version, "rps": 1000.0, "successRate": success,
            "p50": 1.0, "p95": 2.0, "p99": 3.0, "mtlsShare": 1.0}


async def _apply(cp: ControlPlane, tmp_path: Path) -> None:
    code, _, err = await cp.meshctl("apply", "-f", str(write(tmp_path / "shop.yaml", SHOP)))
    assert code == 0, err


async def _weights(cp: ControlPlane) -> list[dict[str, Any]]:
    stored = await cp.store.get("Route", "shop", "reviews")
    assert stored is not None
    return list(stored.resource.raw["spec"]["rules"][-1]["backends"])


async def test_canary_row_is_its_version_label_in_its_namespace(tmp_path: Path) -> None:
    """Subset `canary` is measured as version v3-rc of `reviews.shop`, not another row:
    the failing v3-rc row of reviews.other and the healthy stable row do not count."""
    stat = FakeStat([row("reviews.other", "v3-rc", 1.0), row("reviews.shop", "v1", 1.0),
                     row("reviews.shop", "v3-rc", 0.5)])
    async with control_plane(MemStore(), [FakeSync().route(), stat.route()]) as cp:
        await _apply(cp, tmp_path)
        code, out, err = await cp.meshctl("canary", "reviews", *FAST, "--failures", "1")
        assert code == 1 and err == "canary rolled back: success rate 50.00% < 99.00%\n", out
        assert "measured as version v3-rc" in out
        assert await _weights(cp) == [{"subset": "stable", "weight": 100},
                                      {"subset": "canary", "weight": 0}]


async def test_a_bare_service_label_is_found_too(tmp_path: Path) -> None:
    """While one namespace has the service its metrics say `reviews`: that row is the canary's."""
    stat = FakeStat([row("reviews", "v3-rc", 1.0)])
    async with control_plane(MemStore(), [FakeSync().route(), stat.route()]) as cp:
        await _apply(cp, tmp_path)
        code, out, err = await cp.meshctl("canary", "reviews", *FAST)
        assert (code, err) == (0, ""), out
        assert out.endswith("canary promoted\n")
        assert await _weights(cp) == [{"subset": "stable", "weight": 0},
                                      {"subset": "canary", "weight": 100}]


async def test_window_widens_to_two_scrapes(tmp_path: Path) -> None:
    """A 1 s interval against 2 s scrapes reads 5 s windows, and the plan says so."""
    stat = FakeStat([row("reviews", "v3-rc", 1.0)], scrape_interval=2.0)
    async with control_plane(MemStore(), [FakeSync().route(), stat.route()]) as cp:
        await _apply(cp, tmp_path)
        code, out, _ = await cp.meshctl("canary", "reviews", *FAST, "--dry-run")
        assert code == 0
        assert "every 1ms (metrics over the last 5s: two scrapes of the control plane)" in out
        assert stat.windows == ["0.001"]  # the first read learns the scrape interval
        stat.windows.clear()
        code, out, _ = await cp.meshctl("canary", "reviews", *FAST[:-4], "--interval", "1s",
                                        "--min-requests", "1", "--step", "100")
        assert code == 0, out
        assert stat.windows == ["1", "5"]


async def test_unacked_step_stops_and_leaves_the_weights(tmp_path: Path) -> None:
    """A step the sidecars do not ACK ends the run (exit 1), naming them; no rollback write."""
    sync = FakeSync(lagging=[{"name": "reviews-v3-1", "nack": None}])
    stat = FakeStat([row("reviews", "v3-rc", 1.0)])
    async with control_plane(MemStore(), [sync.route(), stat.route()]) as cp:
        await _apply(cp, tmp_path)
        code, out, err = await cp.meshctl("canary", "reviews", *FAST, "--timeout", "2")
        assert code == 1, out
        assert err == ("error: canary at 50% applied, but 1 not synced after 2 s: reviews-v3-1; "
                       "the weights are left as they are\n")
        assert await _weights(cp) == [{"subset": "stable", "weight": 50},
                                      {"subset": "canary", "weight": 50}]


async def test_without_metrics_nothing_changes(tmp_path: Path) -> None:
    """A control plane that serves no /api/v1/stat: refused before the first step."""
    async with control_plane(MemStore(), [FakeSync().route()]) as cp:
        await _apply(cp, tmp_path)
        code, _, err = await cp.meshctl("canary", "reviews", *FAST)
        assert code == 1 and err.startswith("error: cannot read the canary's metrics: "
                                            "/api/v1/stat answered 404")
        assert err.endswith("; nothing changed\n")
        assert await _weights(cp) == [{"subset": "stable", "weight": 100}]


RULED = shop({**header_rule("stable", "1", header="x-beta", name="beta"), **STABLE})


async def test_rule_steps_the_named_rule_and_leaves_the_default(tmp_path: Path) -> None:
    """`--rule beta` promotes the canary in the rule named beta only (as `shift --rule`); the
    default rule keeps its weights; an unknown rule is refused before anything changes."""
    stat = FakeStat([row("reviews", "v3-rc", 1.0)])
    async with control_plane(MemStore(), [FakeSync().route(), stat.route()]) as cp:
        code, _, err = await cp.meshctl("apply", "-f", str(write(tmp_path / "r.yaml", RULED)))
        assert code == 0, err
        code, out, err = await cp.meshctl("canary", "reviews", *FAST, "--rule", "nope")
        assert code == 1 and "has no rule named 'nope' (named: beta)" in err, out
        code, out, err = await cp.meshctl("canary", "reviews", *FAST, "--rule", "beta")
        assert (code, err) == (0, ""), out
        assert "(namespace shop, rule 'beta')" in out and out.endswith("canary promoted\n")
        stored = await cp.store.get("Route", "shop", "reviews")
        assert stored is not None
        beta, default = stored.resource.raw["spec"]["rules"]
        assert beta["backends"] == [{"subset": "stable", "weight": 0},
                                    {"subset": "canary", "weight": 100}]
        assert default["backends"] == [{"subset": "stable", "weight": 100}]


async def test_a_declared_canary_on_the_service_is_not_fought(tmp_path: Path) -> None:
    """A Canary the control plane runs on reviews: the CLI refuses before its first step
    (which would stop that run as a hand edit); once it finished, the CLI runs."""
    declared = ("apiVersion: ami.mesh/v1alpha1\nkind: Canary\nmetadata: {name: rc, namespace: "
                "shop}\nspec: {service: reviews, stable: stable, canary: canary}\n")
    stat = FakeStat([row("reviews", "v3-rc", 1.0)])
    async with control_plane(MemStore(), [FakeSync().route(), stat.route()]) as cp:
        await _apply(cp, tmp_path)
        code, _, err = await cp.meshctl("apply", "-f", str(write(tmp_path / "c.yaml", declared)))
        assert code == 0, err
        code, out, err = await cp.meshctl("canary", "reviews", *FAST)
        assert (code, out) == (1, "")
        assert err == ("error: the control plane runs Canary shop/rc (Initializing) on reviews: "
                       "its first step would stop it (a hand edit of the route, to it); delete "
                       "it or let it finish; nothing changed\n")
        assert await _weights(cp) == [{"subset": "stable", "weight": 100}]
        await cp.store.set_status(("Canary", "shop", "rc"), {"phase": "RolledBack"})
        code, out, _ = await cp.meshctl("canary", "reviews", *FAST)
        assert code == 0, out

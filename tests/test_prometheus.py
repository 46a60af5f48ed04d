"""Prometheus integration: promtool lint of /metrics, a real Prometheus scraping real proxies
with the compose scrape config, and every Grafana dashboard query run against it."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from meshctl.controlplane.httpapi import create_api_app
from meshctl.controlplane.memstore import MemStore
from meshctl.controlplane.reconcile import Reconciler
from meshctl.controlplane.registry import Registry
from meshctl.observe.cpmetrics import metrics_routes
from tests.observe_harness import REPO, Traffic, send, sidecar, wait_until
from tests.proxyharness import Backends, ProxyProcess, free_port
from tests.tools import required_tool

DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
VARIABLES = {"$service": "reviews", "$workload": "productpage"}
# Panels whose series exist only once a policy fires (ejections, rate limits...).
MAY_BE_EMPTY = {"Policy events (5 min)"}
ACCEPTED_LINTS: set[str] = set()  # promtool must find nothing to complain about


@dataclass
class Mesh:
    """productpage's sidecar calls reviews' sidecar (inbound -> echo app); a CP /metrics."""

    front: ProxyProcess
    reviews: ProxyProcess
    cp_url: str


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, backends: Backends,
         echo: int) -> Iterator[Mesh]:
    tmp = Path(tmp_path_factory.mktemp("prom"))
    procs: list[ProxyProcess] = []
    try:
        # an enforced ALLOW and a dry-run DENY: ami_authz_decisions_total for promtool
        authorization = [{"name": "default/allow-all", "action": "ALLOW", "rules": [{}]},
                         {"name": "default/deny-x", "dryRun": True, "action": "DENY",
                          "rules": [{"to": [{"paths": ["/x"]}]}]}]
        reviews, reviews_in = sidecar(tmp / "rv", "reviews", app=echo, services={},
                                      inbound_config={"authorization": authorization})
        procs.append(reviews)
        # a named rule: its ami_route_* series for promtool and the per-rule panels
        front, _ = sidecar(tmp / "pp", "productpage", app=None,
                           services={"reviews": reviews_in},
                           routes=[{"host": "reviews", "name": "reviews",
                                    "rules": [{"name": "all", "backends": [{}]}]}])
        procs.append(front)
        reconciler = Reconciler(MemStore(), Registry())
        reconciler.counters.pushed = 3
        app = create_api_app(MemStore(), token="t", extra_routes=metrics_routes(reconciler))
        yield Mesh(front, reviews, f"127.0.0.1:{backends.aiohttp(app)}")
    finally:
        for p in procs:
            p.stop()


def test_promtool_accepts_sidecar_and_control_plane_metrics(mesh: Mesh) -> None:
    """`promtool check metrics` parses the /metrics bodies (the caller's sidecar's with a
    named rule's ami_route_* series, the callee's with its policies' ami_authz_decisions_total
    series) and finds no lint problem."""
    promtool = required_tool("promtool")
    assert send(mesh.front, "reviews", "/x") == 200
    front, reviews = (f"http://127.0.0.1:{p.admin}/metrics" for p in (mesh.front, mesh.reviews))
    for url in (front, reviews, f"http://{mesh.cp_url}/metrics"):
        with urllib.request.urlopen(url, timeout=5) as resp:
            text = resp.read()
        assert (b"ami_route_requests_total{" in text) == (url == front)
        assert (b"ami_authz_decisions_total{" in text) == (url == reviews)
        out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                             timeout=30)
        problems = set((out.stdout + out.stderr).decode().splitlines()) - ACCEPTED_LINTS
        assert out.returncode in (0, 3) and not problems, (url, out.returncode, problems)


def scrape_config(mesh: Mesh) -> dict[str, Any]:
    """deploy/prometheus.yml (what compose runs) with our targets and a 1 s interval."""
    config: dict[str, Any] = yaml.safe_load((REPO / "deploy" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    for job in config["scrape_configs"]:
        if job["job_name"] == "ami-controlplane":
            job["static_configs"] = [{"targets": [mesh.cp_url]}]
        else:
            job["static_configs"] = [{"targets": [f"127.0.0.1:{mesh.front.admin}",
                                                  f"127.0.0.1:{mesh.reviews.admin}"]}]
    return config


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", (expr, body)
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def dashboard_queries() -> list[tuple[str, str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for name, value in VARIABLES.items():
                    expr = expr.replace(name, value)
                out.append((path.stem, panel["title"], expr))
    return out


@pytest.fixture(scope="module")
def prometheus(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = required_tool("prometheus")
    tmp = Path(tmp_path_factory.mktemp("promdata"))
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(mesh)))
    shutil.copy(REPO / "deploy" / "alerts.yml", tmp / "alerts.yml")  # its rule_files entry
    port = free_port()
    log = (tmp / "prometheus.log").open("wb")
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, (tmp / "prometheus.log").read_text()
        try:
            with urllib.request.urlopen(base + "/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    try:
        wait_until(ready, 30, "prometheus ready")
        with Traffic(lambda: (send(mesh.front, "reviews", "/ok"),
                              send(mesh.front, "reviews", "/status/503"),
                              send(mesh.front, "reviews", "/ok"),
                              send(mesh.front, "reviews", "/ok"))):
            # Both proxies' series (200 and 503, source and destination) scraped 3+ times, so
            # every rate() has points whatever the scrape offsets of the two targets.
            wait_until(lambda: len(query(base, "count_over_time(ami_requests_total[1m]) >= 3"))
                       >= 4, 40, "traffic scraped from both proxies")
            wait_until(lambda: query(base, "count_over_time(ami_controlplane_pushed_total[1m])"
                                           " >= 2"), 20, "two control-plane scrapes")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def test_alert_rules_pass_promtool_and_their_unit_tests() -> None:
    """`promtool check rules` accepts deploy/alerts.yml; `promtool test rules` runs the cases in
    deploy/alerts_test.yml (which alert fires, with which labels and text, and which does not)."""
    promtool = required_tool("promtool")
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        out = subprocess.run([promtool, *args], cwd=REPO / "deploy", capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


def test_prometheus_loads_the_alerts_and_one_fires_on_real_errors(prometheus: str) -> None:
    """The real Prometheus loaded every rule, and the 503s sent through productpage's sidecar
    (one request in four) put AmiServiceErrorRateHigh for reviews in pending (it has a `for`)."""
    with urllib.request.urlopen(prometheus + "/api/v1/rules", timeout=10) as resp:
        groups = json.loads(resp.read())["data"]["groups"]
    loaded = {rule["name"] for group in groups for rule in group["rules"]}
    declared = {rule["alert"] for group in yaml.safe_load(
        (REPO / "deploy" / "alerts.yml").read_text())["groups"] for rule in group["rules"]}
    assert loaded == declared and len(declared) == 10
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"]), groups

    def error_alert() -> list[dict[str, Any]]:
        with urllib.request.urlopen(prometheus + "/api/v1/alerts", timeout=10) as resp:
            alerts: list[dict[str, Any]] = json.loads(resp.read())["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "AmiServiceErrorRateHigh"]

    wait_until(error_alert, 20, "the error-rate alert to be evaluated")
    (alert,) = error_alert()
    assert alert["labels"]["destination_service"] == "reviews"
    assert alert["state"] in ("pending", "firing")


def test_success_rate_per_service_through_prometheus(prometheus: str) -> None:
    """The service dashboard's success-rate query gives reviews' 3-in-4 success."""
    expr = ('sum by (destination_service) (rate(ami_requests_total{reporter="destination",'
            'response_code!~"5..|0"}[1m])) / sum by (destination_service) '
            '(rate(ami_requests_total{reporter="destination"}[1m]))')
    result = {r["metric"]["destination_service"]: float(r["value"][1])
              for r in query(prometheus, expr)}
    assert set(result) == {"reviews"}
    assert 0.6 < result["reviews"] < 0.9  # three of every four requests succeed


def test_build_info_counts_proxies_per_version(prometheus: str) -> None:
    """`count by (version) (ami_build_info)` (docs/operations.md, upgrades) counts both
    sidecars under this build's version; the control plane's build_info is scraped too."""
    from meshctl.api.build import VERSION

    counts = {r["metric"]["version"]: r["value"][1]
              for r in query(prometheus, "count by (version) (ami_build_info)")}
    assert counts == {VERSION: "2"}
    (cp,) = query(prometheus, "ami_controlplane_build_info")
    assert cp["metric"]["version"] == VERSION


@pytest.mark.parametrize(("dashboard", "panel", "expr"), dashboard_queries(),
                         ids=lambda v: str(v)[:40])
def test_grafana_queries_run(prometheus: str, dashboard: str, panel: str, expr: str) -> None:
    """Every Grafana panel query is valid PromQL and returns series from the running mesh."""
    result = query(prometheus, expr)
    if panel not in MAY_BE_EMPTY:
        assert result, f"{dashboard} / {panel}: no data for {expr}"

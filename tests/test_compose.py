"""compose.yaml: generated from the demo topology, runnable commands, accepted by docker-compose."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import proxy.__main__ as proxy_main
from meshctl.cli import build_parser
from meshctl.demo import compose, setup, traffic, waitfor
from meshctl.demo.topology import INSTANCES, by_name, compose_topology
from tests.tools import required_tool

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    result: dict[str, Any] = doc["services"]
    return result


def test_compose_file_is_the_generated_one() -> None:
    """compose.yaml is exactly `python -m meshctl.demo.compose` output (regenerate it if not)."""
    assert COMPOSE.read_text() == compose.dump(), \
        "compose.yaml is stale: run `.venv/bin/python -m meshctl.demo.compose > compose.yaml`"


def test_mesh_services_run_the_topology_commands(services: dict[str, Any]) -> None:
    """Each mesh service's command and environment are the topology's (apps behind waitfor)."""
    for spec in compose_topology():
        service = services[spec.name]
        command = service["command"]
        if spec.role == "app":
            assert command[command.index("--") + 1:] == list(spec.argv)
        else:
            assert command == list(spec.argv)
        assert service.get("environment", {}) == spec.environ


def test_sidecars_share_their_app_network_namespace(services: dict[str, Any]) -> None:
    """`network_mode: service:<app>`; the app waits for that sidecar's /ready on admin 15000."""
    for inst in INSTANCES:
        sidecar = services[f"{inst.name}-sidecar"]
        assert sidecar["network_mode"] == f"service:{inst.name}"
        assert "ports" not in sidecar
        app = services[inst.name]
        assert app["command"][3] == "http://127.0.0.1:15000/ready"
        assert app["environment"]["HTTP_PROXY"] == "http://127.0.0.1:15001"
        assert "ports" not in app


def test_only_the_gateway_publishes_beyond_loopback(services: dict[str, Any]) -> None:
    """The gateway publishes 8080; the UIs and the control plane only on 127.0.0.1."""
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert published.pop("gateway") == ["8080:8080"]
    for ports in published.values():
        assert all(p.startswith("127.0.0.1:") for p in ports)


def test_prometheus_scrapes_every_proxy_and_the_control_plane() -> None:
    """deploy/prometheus.yml lists each sidecar's and the gateway's admin, and the API."""
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]]
            for j in config["scrape_configs"]}
    assert jobs["ami-proxies"] == compose.scrape_targets()
    assert jobs["ami-controlplane"] == ["controlplane:15080"]


def test_grafana_provisioning_points_at_the_dashboards_mount(services: dict[str, Any]) -> None:
    """The dashboard provider reads the directory compose mounts deploy/grafana/dashboards on."""
    provider = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/ami.yml").read_text())["providers"][0]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in services["grafana"]["volumes"])
    assert mounts["./deploy/grafana/dashboards"] == provider["options"]["path"]
    datasources = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/datasources.yml").read_text())
    assert {d["type"] for d in datasources["datasources"]} == {"prometheus", "jaeger"}


def test_proxy_commands_pass_a_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    """Every sidecar's and the gateway's command line is accepted by `python -m proxy --dry-run`."""
    for spec in compose_topology():
        if spec.role in ("sidecar", "gateway"):
            assert spec.argv[:3] == ("python", "-m", "proxy")
            assert proxy_main.main([*spec.argv[3:], "--dry-run"]) == 0, spec.name
    capsys.readouterr()


def test_control_plane_command_passes_a_dry_run(capsys: pytest.CaptureFixture[str]) -> None:
    """`meshctl serve ... --dry-run` accepts the control plane's command line."""
    spec = by_name(compose_topology())["controlplane"]
    args = build_parser().parse_args([*spec.argv[1:], "--dry-run"])
    assert args.command == "serve" and args.open_reads
    assert args.listen == "0.0.0.0:15080" and args.grpc_listen == "0.0.0.0:15012"
    assert args.func(args) == 0


def test_setup_and_waitfor_commands_pass_a_dry_run(services: dict[str, Any],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The set-up step and each app's readiness wrapper accept their arguments."""
    assert services["setup"]["command"][:3] == ["python", "-m", "meshctl.demo.setup"]
    assert setup.main([*services["setup"]["command"][3:], "--dry-run"]) == 0
    for inst in INSTANCES:
        command = services[inst.name]["command"]
        assert command[:3] == ["python", "-m", "meshctl.demo.waitfor"]
        assert waitfor.main([*command[3:command.index("--")], "--dry-run",
                             *command[command.index("--"):]]) == 0
    capsys.readouterr()


def test_traffic_service_loads_the_gateway(services: dict[str, Any]) -> None:
    """As `meshctl demo up`, compose sends the demo's load (once the gateway is ready), so the
    dashboards and a declared Canary's analyses have requests."""
    service = services["traffic"]
    command = service["command"]
    assert command[:3] == ["python", "-m", "meshctl.demo.traffic"]
    assert command[3] == "http://gateway:8080"
    assert service["depends_on"] == {"gateway": {"condition": "service_healthy"}}
    assert traffic.main([*command[3:], "--dry-run"]) == 0


@pytest.mark.parametrize("module", sorted({i.service for i in INSTANCES}))
def test_app_commands_start_with_their_environment(module: str, services: dict[str, Any]) -> None:
    """Each app module runs with its compose environment (`--help` stops before it listens)."""
    name = next(i.name for i in INSTANCES if i.service == module)
    command = services[name]["command"]
    argv = command[command.index("--") + 1:]
    env = {**os.environ, **services[name]["environment"]}
    result = subprocess.run([sys.executable, *argv[1:], "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--port" in result.stdout


def test_docker_compose_accepts_the_file() -> None:
    """`docker-compose config -q` (Debian package) accepts compose.yaml."""
    tool = required_tool("docker-compose", hint="Debian package docker-compose")
    result = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr

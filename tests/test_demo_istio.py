"""End to end: `meshctl demo up --istio` starts Bookinfo from Istio's YAML, and Istio's task
files (request routing, fault injection, traffic shifting) do on the demo what Istio's Bookinfo
tasks say they do.

Real processes on 127.0.0.1 (control plane, 7 proxies, 6 apps) on free ports, as
tests/test_demo_e2e.py; the files are sample_apps/bookinfo/istio/.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from meshctl.api.istio.common import TRANSLATED_FROM
from meshctl.client import ControlPlaneClient
from tests.ports import free_block, free_port
from tests.test_demo_e2e import BLOCK, DIRECT, Demo

ISTIO = Path(__file__).resolve().parent.parent / "sample_apps" / "bookinfo" / "istio"
ALL_V1 = "default/virtual-service-all-v1"
AMI_KIND = {"VirtualService": "Route", "DestinationRule": "DestinationPolicy"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("demo-istio")
    d = Demo(workdir, free_port(), free_port())
    up = d.meshctl("demo", "up", "--istio", "--detach", "--no-traffic",
                   "--gateway-port", str(d.gateway), "--api-port", str(d.api),
                   "--grpc-port", str(free_port()), "--base-port", str(free_block(BLOCK)),
                   "--certs-dir", str(workdir / "certs"))
    try:
        assert up.returncode == 0, f"demo up --istio failed:\n{up.stdout}\n{up.stderr}"
        yield replace(d, banner=up.stdout)
    finally:
        d.meshctl("demo", "down")


def apply(demo: Demo, name: str) -> str:
    """Apply an Istio file; wait until every proxy has ACKed the store version it made."""
    path = ISTIO / f"{name}.yaml"
    result = demo.meshctl("apply", "-f", str(path))
    assert result.returncode == 0, result.stderr
    client = ControlPlaneClient(f"http://127.0.0.1:{demo.api}")
    version = max(int(client.get(AMI_KIND[d["kind"]], d["metadata"]["name"])
                      ["metadata"]["resourceVersion"])
                  for d in yaml.safe_load_all(path.read_text()))
    url = f"http://127.0.0.1:{demo.api}/api/v1/sync?storeVersion={version}&timeout=20"
    with DIRECT.open(url, timeout=30) as resp:
        assert json.loads(resp.read())["synced"] is True
    return result.stdout


def test_the_page_starts_on_v1_from_objects_made_of_istio_yaml(demo: Demo) -> None:
    """Every service on v1 (no stars); the Route and DestinationPolicy say which Istio
    document they were made from."""
    status, html, _ = demo.page()
    assert status == 200 and "Reviews served by: reviews-v1" in html, html
    assert "data-stars" not in html
    for kind, origin in (("route", "virtualservice.networking.istio.io/reviews"),
                         ("destinationpolicy", "destinationrule.networking.istio.io/reviews")):
        got = demo.meshctl("get", kind, "reviews", "-o", "json")
        assert got.returncode == 0, got.stderr
        assert json.loads(got.stdout)["metadata"]["annotations"][TRANSLATED_FROM] == origin


def test_request_routing_then_fault_injection_for_jason(demo: Demo) -> None:
    """Istio's tasks in their order: reviews-test-v2 sends jason to v2 (black stars), the
    others to v1; ratings-test-abort then fails jason's ratings calls at once. Applying the
    seeded documents' new versions configures the objects the demo started with."""
    out = apply(demo, "virtual-service-reviews-test-v2")
    assert "virtualservice.networking.istio.io/reviews -> route.ami.mesh/reviews configured" \
        in out
    try:
        _, html, _ = demo.page("jason")
        assert 'data-color="black"' in html and "reviews-v2" in html, html
        assert "data-stars" not in demo.page()[1]
        apply(demo, "virtual-service-ratings-test-abort")
        status, html, _ = demo.page("jason")
        assert status == 200 and "Ratings service is currently unavailable" in html, html
        assert "Ratings service is currently unavailable" not in demo.page()[1]
    finally:
        apply(demo, ALL_V1)
    assert "data-stars" not in demo.page("jason")[1]


def test_traffic_shifting_to_v3(demo: Demo) -> None:
    """reviews-v3: every load shows red stars; all-v1 brings back no stars."""
    apply(demo, "virtual-service-reviews-v3")
    try:
        for _ in range(3):
            _, html, _ = demo.page()
            assert 'data-color="red"' in html and "reviews-v3" in html, html
    finally:
        apply(demo, ALL_V1)


def test_the_banners_istio_commands_work_as_printed(demo: Demo) -> None:
    """The banner names Istio's files by paths that exist from the demo's directory, and its
    commands run as printed."""
    tried = demo.banner.split("Try next", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    commands = [line.split("#", 1)[0].split() for line in tried]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AMI_")}
    env["AMI_CONTROL_PLANE"] = f"http://127.0.0.1:{demo.api}"
    applies = [c for c in commands if c[:3] == ["meshctl", "apply", "-f"]]
    assert len(applies) == 3 and all(Path(demo.workdir, c[3]).is_file() for c in applies), tried
    assert all("/istio/" in c[3] for c in applies), tried
    back = next(c for c in applies if c[3].endswith("virtual-service-all-v1.yaml"))
    for argv in (back, ["meshctl", "get", "routes", "reviews", "-o", "yaml"]):
        done = subprocess.run([sys.executable, "-m", "meshctl", *argv[1:]], cwd=demo.workdir,
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (argv, done.stderr)
    assert TRANSLATED_FROM in done.stdout

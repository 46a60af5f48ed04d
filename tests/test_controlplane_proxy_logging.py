"""`meshctl proxy-config log`: a sidecar's log levels read and set through the control plane.

A real `meshctl serve` and a reviews sidecar registered with it: the CLI calls
`/api/v1/proxies/{name}/logging`, which relays to the sidecar's admin `/logging` (privileged
there: the control plane calls it over mTLS with the sidecar's admin token). Switched to DEBUG
the sidecar logs each request's line; back at INFO it does not; `--reset` restores its start-up
levels. Writes need the API token; bad names are refused with the sidecar's words.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import meshbuilder
from tests.helpers_mesh import PYTHON, MeshProcess, http_get, wait_for
from tests.resources import mesh_config

pytestmark = pytest.mark.timeout(180)


class Mesh:
    def __init__(self, control: MeshProcess, sidecar: MeshProcess, home: Path) -> None:
        self.control, self.sidecar, self.home = control, sidecar, home

    def meshctl(self, *argv: str, token: str | None = "") -> subprocess.CompletedProcess[str]:
        """meshctl against this control plane; ``token`` None: no token at all."""
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AMI_")},
               "AMI_CONTROL_PLANE": self.control.info["api"], "HOME": str(self.home)}
        if token is not None:
            env["AMI_TOKEN"] = token or self.control.info["token"]
        return subprocess.run([PYTHON, "-m", "meshctl", *argv], env=env, cwd=self.home,
                              capture_output=True, text=True, timeout=60)

    def request(self, path: str) -> None:
        status, _ = http_get(f"http://{self.sidecar.info['inbound']}{path}", {"Host": "reviews"})
        assert status == 200

    def router_lines(self, path: str) -> list[str]:
        return [line for line in self.sidecar.output().splitlines()
                if "ami.proxy.router: inbound GET " in line and f"{path} " in line]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with meshbuilder.Mesh(Path(tmp_path_factory.mktemp("proxylogging"))) as mesh:
        # plaintext to the inbound listener: a plain GET
        mesh.control_plane(mesh_config(mtls="DISABLE"), warmup=0.0)
        (mesh.tmp / "home").mkdir()
        sidecar = mesh.service("reviews", "v1")["v1"]
        mesh.wait_synced(20)
        # the control plane calls a sidecar with a certificate over mTLS: wait for that case
        mesh.wait_certified()
        yield Mesh(mesh.cp, sidecar, mesh.tmp / "home")


def test_read_set_and_reset_a_sidecars_levels(mesh: Mesh) -> None:
    name = mesh.sidecar.info["name"]
    read = mesh.meshctl("proxy-config", "log", name)
    assert read.returncode == 0, read.stderr
    rows = [line.split() for line in read.stdout.splitlines()]
    assert rows[0] == ["LOGGER", "LEVEL"]
    assert ["ami.proxy.router", "info"] in rows  # the sidecar started at --log-level INFO

    debug = mesh.meshctl("proxy-config", "log", name, "--level", "ami.proxy.router:debug",
                         "-o", "json")
    assert debug.returncode == 0, debug.stderr
    answer = json.loads(debug.stdout)
    assert answer["proxy"] == name
    assert answer["loggers"]["ami.proxy.router"] == "debug"
    assert answer["loggers"]["ami.proxy"] == "info"
    mesh.request("/cp-debug")
    wait_for(lambda: mesh.router_lines("/cp-debug"), 10, "the request's DEBUG line")
    assert "-> reviews endpoint=" in mesh.router_lines("/cp-debug")[0]

    info = mesh.meshctl("proxy-config", "log", name, "--level", "ami.proxy.router:info")
    assert info.returncode == 0, info.stderr
    assert ["ami.proxy.router", "info"] in [line.split() for line in info.stdout.splitlines()]
    mesh.request("/cp-quiet")
    every = mesh.meshctl("proxy-config", "log", name, "--level", "debug", "-o", "json")
    assert every.returncode == 0, every.stderr
    assert set(json.loads(every.stdout)["loggers"].values()) == {"debug", "info"}  # h2: info
    mesh.request("/cp-marker")  # logged, so the proxy is past /cp-quiet, which was not
    wait_for(lambda: mesh.router_lines("/cp-marker"), 10, "the marker request's DEBUG line")
    assert mesh.router_lines("/cp-quiet") == []

    reset = mesh.meshctl("proxy-config", "log", name, "--reset", "-o", "json")
    assert reset.returncode == 0, reset.stderr
    assert set(json.loads(reset.stdout)["loggers"].values()) == {"info"}


def test_setting_levels_needs_the_token(mesh: Mesh) -> None:
    name = mesh.sidecar.info["name"]
    refused = mesh.meshctl("proxy-config", "log", name, "--level", "debug", token=None)
    assert refused.returncode == 1
    assert "writes need 'Authorization: Bearer <token>'" in refused.stderr
    wrong = mesh.meshctl("proxy-config", "log", name, "--level", "debug", token="guessed")
    assert wrong.returncode == 1 and "not this control plane's" in wrong.stderr
    read = mesh.meshctl("proxy-config", "log", name, "-o", "json", token=None)  # reads: open
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["loggers"]["ami.proxy"] == "info"


def test_bad_names_are_refused_with_the_valid_ones(mesh: Mesh) -> None:
    name = mesh.sidecar.info["name"]
    logger = mesh.meshctl("proxy-config", "log", name, "--level", "ami.proxy.nope:debug")
    assert logger.returncode == 1
    assert "unknown logger 'ami.proxy.nope'; loggers: ami.proxy, " in logger.stderr
    level = mesh.meshctl("proxy-config", "log", name, "--level", "loud")
    assert level.returncode == 1
    assert "unknown level 'loud'; levels: debug, info, warning, error, critical" in level.stderr
    nobody = mesh.meshctl("proxy-config", "log", "nobody-v1")
    assert nobody.returncode == 1 and "no proxy named 'nobody-v1'" in nobody.stderr
    usage = mesh.meshctl("proxy-config", "log", name, "--level", "a:")
    assert usage.returncode == 2 and "give LEVEL or LOGGER:LEVEL" in usage.stderr
    bare = mesh.meshctl("proxy-config", "log")
    assert bare.returncode == 2 and "give NAME, or log NAME" in bare.stderr
    stray = mesh.meshctl("proxy-config", name, "--reset")
    assert stray.returncode == 2 and "go with `proxy-config log NAME`" in stray.stderr
    levels = json.loads(mesh.meshctl("proxy-config", "log", name, "-o", "json").stdout)
    assert set(levels["loggers"].values()) == {"info"}  # nothing changed

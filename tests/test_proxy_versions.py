"""Proxy versions with a real control plane and real sidecars: proxy-status, `meshctl version`,
`meshctl check`'s skew warning, the build metrics, and an old proxy's Register (no version)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.api.build import PYTHON, VERSION
from meshctl.ca import BootstrapTokens
from meshctl.observe.skew import skew
from tests.helpers_mesh import (
    PYTHON as PYTHON_EXE,
)
from tests.helpers_mesh import (
    ROOT,
    MeshProcess,
    all_synced,
    http_get,
    http_json,
    proxies,
    start_control_plane,
    start_sidecar,
    wait_for,
)

pytestmark = pytest.mark.timeout(180)
OLD = "0.0.9"  # the version of the other build: one this control plane is not
MESH = """\
apiVersion: ami.mesh/v1alpha1
kind: MeshConfig
metadata: {name: default}
spec: {mtls: {mode: DISABLE}}
"""


def other_build(tmp: Path, version: str) -> Path:
    """A copy of the proxy and meshctl packages that says it is ``version``: another build of
    the proxy, run as it is (no switch in the proxy pretends to be another version)."""
    tree = tmp / f"build-{version}"
    for package in ("proxy", "meshctl"):
        shutil.copytree(ROOT / package, tree / package,
                        ignore=shutil.ignore_patterns("__pycache__", "static"))
    init = tree / "meshctl" / "__init__.py"
    text = init.read_text()
    assert f'__version__ = "{VERSION}"' in text
    init.write_text(text.replace(f'__version__ = "{VERSION}"', f'__version__ = "{version}"'))
    return tree


@pytest.mark.parametrize(("proxy", "control_plane", "word"), [
    ("0.2.0", "0.2.0", "same"), ("0.2.1", "0.2.0", "patch"), ("0.2.0rc1", "0.2.0", "patch"),
    ("0.1.7", "0.2.0", "older"), ("1.4.2", "1.5.0", "older"), ("0.0.9", "0.2.0", "too old"),
    ("0.9.0", "1.0.0", "too old"), ("0.3.0", "0.2.0", "newer"), ("1.0.0", "0.9.9", "newer"),
    ("unknown", "0.2.0", "unknown"), ("main", "0.2.0", "unknown"),
])
def test_skew_words(proxy: str, control_plane: str, word: str) -> None:
    """One minor version behind (same major) is the supported skew; newer never is."""
    assert skew(proxy, control_plane) == word


class Mesh:
    """A control plane, one sidecar of this build (reviews) and, on demand, one of another."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        (tmp / "mesh").mkdir()
        (tmp / "mesh" / "mesh.yaml").write_text(MESH)
        self.cp = start_control_plane(tmp, warmup=0.0, grace=0.0)
        self.current = start_sidecar(tmp, self.cp.info["grpc"], "reviews", "v1")
        self.old_tree = other_build(tmp, OLD)

    def meshctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON_EXE, "-m", "meshctl", "--control-plane",
                               self.cp.info["api"], *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=30)

    def listed(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in proxies(self.cp)}

    def close(self) -> None:
        self.current.stop()
        self.cp.stop()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    m = Mesh(tmp_path_factory.mktemp("versions"))
    try:
        wait_for(lambda: all_synced(m.cp, {m.current.info["name"]}), 20, "reviews synced")
        yield m
    finally:
        m.close()


@pytest.fixture
def old_sidecar(mesh: Mesh) -> Iterator[MeshProcess]:
    """A ratings sidecar of the other build, connected and synced for the test, then gone."""
    proc = start_sidecar(mesh.tmp, mesh.cp.info["grpc"], "ratings", "v1", source=mesh.old_tree)
    try:
        # Its arrival (and its readiness) is pushed to reviews too: both synced, it ready.
        wait_for(lambda: all_synced(mesh.cp, {proc.info["name"], mesh.current.info["name"]})
                 and mesh.listed()[proc.info["name"]]["ready"], 20,
                 "the old sidecar ready and both synced")
        yield proc
    finally:
        proc.stop()
        wait_for(lambda: proc.info["name"] not in mesh.listed(), 20, "the old sidecar gone")


class OldProtocolProxy:
    """A stream that registers as a proxy built before Register had proxy_version (18) and
    build (19): the message holds only the fields such a proxy sets, and it ACKs its snapshot."""

    def __init__(self, mesh: Mesh, name: str) -> None:
        roots = (mesh.cp.info["certs_dir"] / "trust-bundle.pem").read_bytes()
        self.channel = grpc.secure_channel(
            mesh.cp.info["grpc"], grpc.ssl_channel_credentials(root_certificates=roots))
        token = BootstrapTokens.load(mesh.cp.info["certs_dir"]).token_for("default", "details")
        register = mesh_pb2.Register(
            name=name, service="details", labels={"version": "v1"}, inbound="127.0.0.1:1",
            admin="127.0.0.1:2", mode="sidecar", token=token, ready=True, app_protocol="auto")
        fields = {f.name for f, _ in register.ListFields()}
        assert not fields & {"proxy_version", "build"}, "not what an old proxy sends"
        self.outbox: list[mesh_pb2.ProxyMessage] = [mesh_pb2.ProxyMessage(register=register)]
        self.wake = threading.Event()
        self.done = threading.Event()
        self.call = mesh_pb2_grpc.MeshControlStub(self.channel).StreamConfig(self._requests())
        first = next(iter(self.call))
        self.outbox.append(mesh_pb2.ProxyMessage(ack=mesh_pb2.Ack(version=first.version,
                                                                  nonce=first.nonce)))
        self.wake.set()

    def _requests(self) -> Iterator[mesh_pb2.ProxyMessage]:
        while not self.done.is_set():
            if self.outbox:
                yield self.outbox.pop(0)
            elif self.wake.wait(0.05):
                self.wake.clear()

    def close(self) -> None:
        self.done.set()
        self.call.cancel()
        self.channel.close()


def test_proxy_status_shows_the_version_each_proxy_runs(mesh: Mesh,
                                                        old_sidecar: MeshProcess) -> None:
    """PROXY-VERSION in the table and proxyVersion in -o json: this build's version for its
    sidecar, the other build's for its own; every key of the proxies contract is still there."""
    current, old = mesh.current.info["name"], old_sidecar.info["name"]
    out = mesh.meshctl("proxy-status", "-o", "json")
    assert out.returncode == 0, out.stderr
    listed = {p["name"]: p for p in json.loads(out.stdout)}
    assert (listed[current]["proxyVersion"], listed[old]["proxyVersion"]) == (VERSION, OLD)
    assert listed[current]["proxyBuild"].endswith(PYTHON)
    for key in ("name", "service", "version", "inbound", "admin", "configVersion", "synced",
                "certExpiry"):
        assert key in listed[old], key
    assert listed[old]["version"] == "v1"  # still the workload's version label
    table = mesh.meshctl("proxy-status")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    column = header.split().index("PROXY-VERSION")
    versions = {row.split()[0]: row.split()[column] for row in rows}
    assert versions == {current: VERSION, old: OLD}


def test_describe_shows_the_version_each_proxy_runs(mesh: Mesh, old_sidecar: MeshProcess) -> None:
    """`meshctl describe`'s proxy table has PROXY-VERSION as proxy-status does: this build's
    version for its sidecar, the other build's for its own; VERSION stays the label."""
    current, old = mesh.current.info["name"], old_sidecar.info["name"]
    out = mesh.meshctl("describe", "meshconfig", "default")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("Proxies (store version"))
    header, *rows = (line.split() for line in lines[start + 1:])
    listed = {row[0]: dict(zip(header, row, strict=False)) for row in rows}
    assert (listed[current]["PROXY-VERSION"], listed[old]["PROXY-VERSION"]) == (VERSION, OLD)
    assert listed[current]["VERSION"] == listed[old]["VERSION"] == "v1"


def test_meshctl_version_counts_proxies_per_version(mesh: Mesh, old_sidecar: MeshProcess) -> None:
    """`meshctl version` prints the client's and the live control plane's versions and the
    connected proxies per version; -o json has the same; --short only the client's."""
    out = mesh.meshctl("version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"client version: {VERSION}", f"control plane version: {VERSION}",
        "data plane version: " + ", ".join(sorted([f"{VERSION} (1 proxy)",
                                                   f"{OLD} (1 proxy)"]))]
    out = mesh.meshctl("version", "-o", "json")
    assert out.returncode == 0, out.stderr
    body = json.loads(out.stdout)
    assert body["client"]["version"] == body["controlPlane"]["version"] == VERSION
    assert sorted((d["version"], d["proxies"]) for d in body["dataPlane"]) == sorted(
        [(VERSION, 1), (OLD, 1)])
    short = mesh.meshctl("version", "--short")
    assert (short.returncode, short.stdout) == (0, f"{VERSION}\n")


def test_meshctl_version_without_a_control_plane_prints_the_client_and_fails() -> None:
    """Nothing listening: the client's version on stdout, the reason on stderr, exit 1."""
    from tests.ports import free_port

    out = subprocess.run([PYTHON_EXE, "-m", "meshctl", "--control-plane",
                          f"http://127.0.0.1:{free_port()}", "version"],
                         capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert out.returncode == 1
    assert out.stdout == f"client version: {VERSION}\n"
    assert out.stderr.startswith("error: cannot reach the control plane at http://127.0.0.1:")


def test_meshctl_version_against_an_older_or_empty_control_plane_or_another_server() -> None:
    """An API from before /api/v1/version (this API without that route) answers its JSON 404:
    the control plane's version is `unknown`, not an error; another answer is not the API; a
    control plane without proxies says so."""
    from meshctl.controlplane.httpapi import create_api_app
    from meshctl.controlplane.memstore import MemStore
    from meshctl.controlplane.registry import Registry
    from meshctl.controlplane.versionapi import version_routes
    from tests.proxyharness import Backends, echo_app

    backends = Backends()
    try:
        empty = backends.aiohttp(create_api_app(MemStore(), token="t",
                                                extra_routes=version_routes(Registry())))
        out = subprocess.run([PYTHON_EXE, "-m", "meshctl", "--control-plane",
                              f"http://127.0.0.1:{empty}", "version"],
                             capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.stdout.splitlines()[1:] == [f"control plane version: {VERSION}",
                                               "data plane version: none (no proxy connected)"]
        old_api = backends.aiohttp(create_api_app(MemStore(), token="t"))
        other = backends.aiohttp(echo_app())  # answers every path, but not as the API does
        out = subprocess.run([PYTHON_EXE, "-m", "meshctl", "--control-plane",
                              f"http://127.0.0.1:{old_api}", "version"],
                             capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[1:] == [
            "control plane version: unknown",
            "data plane version: unknown (the control plane does not report it: older than "
            "this meshctl)"]
        out = subprocess.run([PYTHON_EXE, "-m", "meshctl", "--control-plane",
                              f"http://127.0.0.1:{other}", "version"],
                             capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert out.returncode == 1 and "not as the Ami control plane API does" in out.stderr
    finally:
        backends.close()


def test_check_warns_of_a_proxy_on_another_version(mesh: Mesh, old_sidecar: MeshProcess) -> None:
    """check names the proxy on another version, says the supported skew and the upgrade
    order; it is a warning (exit 0), not a failure."""
    # A push still in flight (a proxy's readiness or app health just reported) is a failed
    # "every proxy synced" for a moment: the check is asked again until it settles.
    out = wait_for(lambda: (o := mesh.meshctl("check")).returncode == 0 and o, 20,
                   "meshctl check to pass (with warnings)")
    line = next(x for x in out.stdout.splitlines() if "proxies run the control plane" in x)
    assert line.startswith(f"  ‼ proxies run the control plane's version ({VERSION}): {OLD} ")
    assert line.endswith(f": {old_sidecar.info['name']}")
    assert mesh.current.info["name"] not in line
    hint = out.stdout.splitlines()[out.stdout.splitlines().index(line) + 1]
    assert "one minor version older" in hint and "upgrade the control plane first" in hint
    assert "Passed with warnings." in out.stdout


def test_check_passes_when_every_proxy_runs_the_control_planes_version(mesh: Mesh) -> None:
    """With only this build's sidecar connected, the version check is ✔."""
    wait_for(lambda: {n for n, p in mesh.listed().items() if p["connected"]} == {
        mesh.current.info["name"]}, 20, "only this build's sidecar connected")
    # (the old sidecar's departure is pushed to reviews: asked again until that settled)
    out = wait_for(lambda: (o := mesh.meshctl("check")).returncode == 0 and o, 20,
                   "meshctl check to pass")
    assert f"  ✔ proxies run the control plane's version ({VERSION})\n" in out.stdout


def test_an_old_proxys_register_without_a_version_shows_unknown(mesh: Mesh) -> None:
    """A Register without proxy_version (a proxy built before it) is accepted and listed as
    `unknown` in proxy-status, counted so by `meshctl version`, and named by check."""
    old = OldProtocolProxy(mesh, "details-v1-old")
    try:
        wait_for(lambda: mesh.listed().get("details-v1-old", {}).get("synced"), 10,
                 "the old-protocol proxy synced")
        entry = mesh.listed()["details-v1-old"]
        assert (entry["proxyVersion"], entry["proxyBuild"]) == ("unknown", None)
        table = mesh.meshctl("proxy-status").stdout.splitlines()
        column = table[0].split().index("PROXY-VERSION")
        row = next(r.split() for r in table if r.startswith("details-v1-old"))
        assert row[column] == "unknown"
        assert "unknown (1 proxy)" in mesh.meshctl("version").stdout
        check = mesh.meshctl("check").stdout
        assert "unknown (built before proxies reported their version): details-v1-old" in check
    finally:
        old.close()


def test_api_and_metrics_report_the_versions(mesh: Mesh, old_sidecar: MeshProcess) -> None:
    """GET /api/v1/version; ami_controlplane_build_info and _proxy_versions on the control
    plane's /metrics; ami_build_info on each sidecar's, with its own build's version."""
    status, body = http_json(mesh.cp.info["api"] + "/api/v1/version")
    assert status == 200 and body["version"] == VERSION and body["build"].endswith(PYTHON)
    assert sorted((d["version"], d["proxies"]) for d in body["dataPlane"]) == sorted(
        [(VERSION, 1), (OLD, 1)])
    cp_metrics = http_get(mesh.cp.info["api"] + "/metrics")[1].decode()
    assert (f'ami_controlplane_build_info{{python="{PYTHON}",version="{VERSION}"}} 1.0'
            in cp_metrics)
    assert f'ami_controlplane_proxy_versions{{version="{OLD}"}} 1.0' in cp_metrics
    for proc, version in ((mesh.current, VERSION), (old_sidecar, OLD)):
        text = http_get(f"http://{proc.info['admin']}/metrics")[1].decode()
        assert f'ami_build_info{{python="{PYTHON}",version="{version}"}} 1.0' in text

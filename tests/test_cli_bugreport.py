"""meshctl bug-report against a real control plane and real sidecars: what the archive holds,
that no secret is in it, and that a hung sidecar or an absent control plane is handled."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshctl.api.build import VERSION
from meshctl.api.kindnames import KIND_PLURALS
from meshctl.ca import BootstrapTokens
from tests import meshbuilder
from tests.helpers_mesh import MeshProcess
from tests.ports import free_port
from tests.resources import destination_policy, documents, header_rule, route

# Secrets a user may put in a Route (routing on a caller's token): they reach the resources and
# every sidecar's config dump, and must not reach the archive.
JWT = ("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJqYXNvbiIsImlzcyI6InRlc3QifQ."
       "c2lnbmF0dXJlLW9mLXRoZS10b2tlbi1pbi10aGUtcm91dGU")
API_KEY = "sk-live-4f1c2e9a7b6d5c3e"
TO_V1 = {"backends": [{"subset": "v1"}]}
ROUTE = documents(
    route("reviews", rules=[
        header_rule("v1", f"Bearer {JWT}", header="authorization", name="tester"),
        header_rule("v1", API_KEY, header="x-api-key", name="partner"), TO_V1]),
    destination_policy("reviews", ("v1",)),
    route("cart", rules=[TO_V1], namespace="shop"),
    destination_policy("cart", ("v1",), namespace="shop"))


@dataclass
class Mesh:
    tmp: Path
    control: MeshProcess
    sidecars: dict[str, MeshProcess]

    def meshctl(self, *args: str, token: bool = True,
                control_plane: str | None = None) -> subprocess.CompletedProcess[str]:
        # HOME and cwd without .ami/token: the token is the one given here, or none
        env = dict(os.environ, HOME=str(self.tmp))
        env.pop("AMI_TOKEN", None)
        if token:
            env["AMI_TOKEN"] = self.control.info["token"]
        return subprocess.run(
            [sys.executable, "-m", "meshctl", "--control-plane",
             control_plane or self.control.info["api"], *args],
            capture_output=True, text=True, timeout=120, env=env, cwd=self.tmp,
            check=False)

    def secrets(self) -> dict[str, str]:
        """Every secret this mesh has, by what it is."""
        certs = Path(self.control.info["certs_dir"])
        tokens = BootstrapTokens.load(certs)
        found = {"api token": self.control.info["token"], "jwt": JWT, "api key": API_KEY,
                 **{f"bootstrap token {s}": tokens.token_for("default", s)
                    for s in self.sidecars}}
        for key in certs.glob("*key*.pem"):
            # the base64 body lines of each private key
            for n, line in enumerate(key.read_text().splitlines()[1:-1]):
                found[f"{key.name} line {n}"] = line
        assert any(k.endswith("key.pem line 0") for k in found), list(certs.iterdir())
        return found


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with meshbuilder.Mesh(Path(tmp_path_factory.mktemp("bugreport"))) as mesh:
        mesh.control_plane()
        sidecars = {service: mesh.sidecar(service, app=mesh.backend(service).info["address"])
                    for service in ("reviews", "ratings")}
        mesh.apply_synced(ROUTE)
        mesh.wait_synced(20)
        yield Mesh(mesh.tmp, mesh.cp, sidecars)


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read()  # type: ignore[union-attr]
                for m in tar.getmembers() if m.isfile()}


def no_secret_in(files: dict[str, bytes], secrets: dict[str, str]) -> None:
    leaks = [(what, name) for name, data in files.items() for what, secret in secrets.items()
             if secret.encode() in data]
    assert not leaks, leaks


def test_archive_holds_every_part_for_every_proxy_and_no_secret(mesh: Mesh) -> None:
    out_file = mesh.tmp / "full.tar.gz"
    result = mesh.meshctl("bug-report", "-o", str(out_file), "--include-config-dumps")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out_file} (") and " kB, " in result.stdout
    assert "warning" not in result.stderr
    assert oct(out_file.stat().st_mode & 0o777) == "0o600"
    files = members(out_file)
    names = {p.info["name"] for p in mesh.sidecars.values()}
    expected = {"summary.txt", "errors.txt", "version.json", "proxy-status.json", "sync.json",
                "store-errors.json", "check.json", "stat.json", "edges.json",
                "controlplane-metrics.txt",
                *(f"resources/{plural}.yaml" for plural in KIND_PLURALS.values()),
                *(f"proxies/{n}/{part}" for n in names
                  for part in ("status.json", "config_dump.json"))}
    assert set(files) == expected
    assert next(iter(files)) == "summary.txt"
    assert files["errors.txt"] == b""
    summary = files["summary.txt"].decode()
    assert f"meshctl:        {VERSION}" in summary
    assert f"control plane:  {VERSION}" in summary
    # the address asked has a label of its own: "control plane:" is one line, its version
    assert summary.count("control plane:") == 1 and "\nAPI:            http://" in summary
    assert f"data plane:     {VERSION} (2 proxies)" in summary
    assert "PROXIES (2, 0 not in sync)" in summary
    for name in names:
        assert name in summary
    for path in expected - {"summary.txt"}:
        assert path in summary  # CONTENTS lists every member
    for name in names:  # the dumps are the sidecars' real running config
        dump = json.loads(files[f"proxies/{name}/config_dump.json"])
        assert dump["snapshot"]["node"]["service"] in mesh.sidecars
    assert b"ami_controlplane_proxies_connected 2.0" in files["controlplane-metrics.txt"]
    # the secrets were there to leak (the route and the dumps route on them), and did not
    routes = files["resources/routes.yaml"].decode()
    assert routes.count("<redacted>") >= 2 and "name: tester" in routes
    # a namespace with no proxy, known from its DestinationPolicy
    assert "name: cart\n  namespace: shop" in routes
    assert b"<redacted>" in files[f"proxies/{mesh.sidecars['ratings'].info['name']}/"
                                  "config_dump.json"]
    no_secret_in(files, mesh.secrets())


def test_service_scope_and_config_dumps_left_out_by_default(mesh: Mesh) -> None:
    out_file = mesh.tmp / "reviews.tar.gz"
    result = mesh.meshctl("bug-report", "-o", str(out_file), "--service", "reviews",
                          "--since", "1m")
    assert result.returncode == 0, result.stderr
    files = members(out_file)
    reviews = mesh.sidecars["reviews"].info["name"]
    assert {p for p in files if p.startswith("proxies/")} == {f"proxies/{reviews}/status.json"}
    assert "routes-reviews.json" in files
    assert json.loads(files["stat.json"])["window"] == 60
    assert "config dumps not included (--include-config-dumps)" in files["summary.txt"].decode()
    no_secret_in(files, mesh.secrets())


def test_config_dumps_without_the_token_are_errors_not_a_failure(mesh: Mesh) -> None:
    out_file = mesh.tmp / "anonymous.tar.gz"
    result = mesh.meshctl("bug-report", "-o", str(out_file), "--include-config-dumps",
                          token=False)
    assert result.returncode == 0, result.stderr
    assert "warning: 2 parts could not be collected" in result.stderr
    errors = members(out_file)["errors.txt"].decode().splitlines()
    # (where the token goes, said once: the control plane's answer says it)
    assert len(errors) == 2 and all("HTTP 401" in e and e.count("AMI_TOKEN") == 1
                                    for e in errors), errors


def test_default_name_has_the_utc_time(mesh: Mesh) -> None:
    result = mesh.meshctl("bug-report")
    assert result.returncode == 0, result.stderr
    [written] = mesh.tmp.glob("ami-bug-report-*Z.tar.gz")
    assert result.stdout.startswith(f"wrote {written.name} (")
    stamp = written.name.removeprefix("ami-bug-report-").removesuffix(".tar.gz")
    assert len(stamp) == 16 and stamp[8] == "T"  # YYYYmmddTHHMMSSZ
    written.unlink()


def test_a_hung_sidecar_is_an_error_line_and_the_report_completes(mesh: Mesh) -> None:
    """A sidecar stopped with SIGSTOP: its gRPC stream stays open (so it is still listed and
    asked), its admin listener accepts and never answers."""
    hung = mesh.sidecars["ratings"]
    out_file = mesh.tmp / "hung.tar.gz"
    hung.proc.send_signal(signal.SIGSTOP)
    try:
        result = mesh.meshctl("bug-report", "-o", str(out_file), "--include-config-dumps")
    finally:
        hung.proc.send_signal(signal.SIGCONT)
    assert result.returncode == 0, result.stderr
    name = hung.info["name"]
    assert "warning: 1 part could not be collected" in result.stderr
    assert f"wrote {out_file}" in result.stdout
    files = members(out_file)
    [error] = files["errors.txt"].decode().splitlines()
    assert error.startswith(f"proxies/{name}/config_dump.json: GET /api/v1/proxies/{name}/")
    # the control plane's own word for it (it said nothing after the colon before)
    assert error.endswith(f"cannot reach its admin listener at https://{hung.info['admin']}: "
                          "TimeoutError"), error  # (mTLS: the sidecar has its certificate)
    assert f"proxies/{name}/config_dump.json" not in files
    assert f"proxies/{name}/status.json" in files
    assert f"proxies/{mesh.sidecars['reviews'].info['name']}/config_dump.json" in files
    assert "ERRORS (1; errors.txt)" in files["summary.txt"].decode()
    assert error in files["summary.txt"].decode()


def test_bad_flags_are_refused_before_any_call(mesh: Mesh) -> None:
    for flags in (["--since", "ten"], ["--timeout", "0"]):
        result = mesh.meshctl("bug-report", *flags, control_plane="http://127.0.0.1:9")
        assert result.returncode == 2 and f"argument {flags[0]}" in result.stderr


def test_an_unwritable_output_is_an_error_line(mesh: Mesh) -> None:
    result = mesh.meshctl("bug-report", "-o", str(mesh.tmp / "no-such-dir" / "r.tar.gz"))
    assert result.returncode == 1
    assert result.stderr == (f"error: cannot write {mesh.tmp / 'no-such-dir' / 'r.tar.gz'}: "
                             "No such file or directory\n")


def test_no_control_plane_is_a_clear_error_and_no_file(mesh: Mesh) -> None:
    out_file = mesh.tmp / "none.tar.gz"
    result = mesh.meshctl("bug-report", "-o", str(out_file),
                          control_plane=f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the control plane at http://127.0.0.1:")
    assert "no report written" in result.stderr
    assert not out_file.exists()


def test_a_control_plane_that_never_answers_meets_the_deadline(mesh: Mesh) -> None:
    """A listener that accepts and says nothing: --timeout ends the call, exit 1."""
    port = free_port()
    listener = socket.create_server(("127.0.0.1", port))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        result = mesh.meshctl("bug-report", "-o", str(mesh.tmp / "hang.tar.gz"),
                              "--timeout", "1", control_plane=f"http://127.0.0.1:{port}")
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: the control plane at http://127.0.0.1:{port} "
                                    "did not answer"), result.stderr
    assert held  # it did connect: the deadline, not a refusal, ended it
    assert not (mesh.tmp / "hang.tar.gz").exists()

"""Tests for the `meshctl validate` and `meshctl schema` commands (meshctl.commands.validate)."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshctl.commands import validate
from tests.resources import destination_policy, documents, route
from tests.test_cli_support import run_group

ROOT = Path(__file__).resolve().parent.parent
POLICY = destination_policy("reviews", ("v1", "v2", "v3"))


def route_to(subset: str, v1: int = 90, name: str | None = None) -> str:
    """The Route for reviews: ``v1`` to v1, 10 to ``subset``."""
    return route("reviews", {"v1": v1, subset: 10}, name=name)


def run(*argv: str) -> int:
    """``meshctl validate`` or ``schema`` with ``argv``."""
    return run_group(validate, *argv)


def test_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A consistent directory prints 'ok: N resources in PATH' and exits 0."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "route.yaml").write_text(route_to("v3"))
    assert run("validate", "-f", str(tmp_path)) == 0
    assert capsys.readouterr().out == f"ok: 2 resources in {tmp_path}\n"


def test_validate_reads_a_symlinked_directory_as_serve_does(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mesh/team -> ../shared/team`: validate (and apply -f, serve --dry-run) read its files
    as the config dir store does, once, even with a link back up (they were left out)."""
    shared, mesh = tmp_path / "shared" / "team", tmp_path / "mesh"
    shared.mkdir(parents=True)
    mesh.mkdir()
    (shared / "policy.yaml").write_text(POLICY)
    (shared / "up").symlink_to(mesh)
    (mesh / "team").symlink_to(shared)
    (mesh / "route.yaml").write_text(route_to("v3"))
    assert run("validate", "-f", str(mesh)) == 0
    assert capsys.readouterr().out == f"ok: 2 resources in {mesh}\n"


def test_validate_prints_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every error is printed on stderr with file, document and field, then a count; exit 1."""
    (tmp_path / "policy.yaml").write_text(POLICY)
    route = tmp_path / "route.yaml"
    route.write_text(documents(route_to("v3"), route_to("v9", name="r2")))
    assert run("validate", "-f", str(tmp_path / "policy.yaml"), "-f", str(route)) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{route} doc 2: spec.host: host reviews already has a Route (see Route default/reviews "
        f"in {route} doc 1)",
        f"{route} doc 2: spec.rules[0].backends[1].subset: unknown subset 'v9' for host "
        "reviews (known: v1, v2, v3)",
        f"2 errors in {tmp_path / 'policy.yaml'}, {route}",
    ]


def test_validate_document_errors_come_first(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """When a document is invalid its errors are printed; cross-document checks wait for a fix."""
    route = tmp_path / "route.yaml"
    route.write_text(route_to("v9", v1=91))
    assert run("validate", "-f", str(route)) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"{route} doc 1: spec.rules[0].backends: weights sum to 101, must be 100",
        f"1 error in {route}",
    ]


def test_validate_nothing_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A directory without any document fails (exit 1), as `meshctl apply` does, not 'ok: 0'."""
    (tmp_path / "notes.txt").write_text(POLICY)
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    assert run("validate", "-f", str(tmp_path)) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: no objects to validate in {tmp_path}\n"


def test_validate_missing_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A path that does not exist is an error, not a crash."""
    assert run("validate", "-f", str(tmp_path / "nope")) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_validate_reads_stdin(monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    """`-f -` reads stdin, as for apply (`meshctl get rt x -o yaml | meshctl validate -f -`)."""
    monkeypatch.setattr("sys.stdin", io.StringIO(route_to("v2", v1=91)))
    assert run("validate", "-f", "-") == 1
    assert capsys.readouterr().err.startswith("<stdin> doc 1: spec.rules[")


def test_schema_prints_one_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """`schema route` prints the Route schema as JSON (kind names are case-insensitive)."""
    assert run("schema", "route") == 0
    assert json.loads(capsys.readouterr().out)["title"] == "Route"


def test_schema_takes_every_kind_name_get_takes(capsys: pytest.CaptureFixture[str]) -> None:
    """As docs/cli.md says for every KIND: singular, plural or short name, any case."""
    for word, title in (("rt", "Route"), ("Routes", "Route"), ("dp", "DestinationPolicy"),
                        ("authorizationpolicies", "AuthorizationPolicy"), ("MC", "MeshConfig"),
                        ("gw", "Gateway")):
        assert run("schema", word) == 0, word
        assert json.loads(capsys.readouterr().out)["title"] == title


def test_schema_unknown_kind(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown kind is a usage error (exit 2, as `get`) and lists the known kinds."""
    assert run("schema", "Ingress") == 2
    assert "expected one of Route" in capsys.readouterr().err


def test_schema_writes_files(tmp_path: Path) -> None:
    """`schema -o DIR` writes one <kind>.json per kind."""
    assert run("schema", "-o", str(tmp_path / "out")) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["authorizationpolicy.json", "canary.json", "destinationpolicy.json",
                     "externalservice.json", "gateway.json", "grpcroute.json", "httproute.json",
                     "meshconfig.json",
                     "peerauthentication.json", "requestauthentication.json", "route.json",
                     "sidecar.json", "telemetry.json"]
    assert json.loads((tmp_path / "out" / "gateway.json").read_text())["title"] == "Gateway"


def test_validate_in_a_real_process(tmp_path: Path) -> None:
    """Run as a separate interpreter, validate reports the error on stderr and exits 1."""
    (tmp_path / "bad.yaml").write_text("apiVersion: ami.mesh/v1alpha1\nkind: Route\n")
    code = ("import argparse, sys; from meshctl.commands import validate; "
            "p = argparse.ArgumentParser(); validate.add_parser(p.add_subparsers()); "
            "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    proc = subprocess.run([sys.executable, "-c", code, "validate", "-f", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert f"{tmp_path / 'bad.yaml'} doc 1: metadata: field is required" in proc.stderr


def test_closed_stdout_ends_quietly() -> None:
    """`meshctl ... | head` whose reader is gone: exit 128+SIGPIPE, no traceback, no error."""
    proc = subprocess.Popen([sys.executable, "-m", "meshctl", "schema"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter has written a byte
    err = proc.stderr.read()
    assert (proc.wait(30), err) == (141, b"")


def test_a_broken_pipe_is_not_a_control_plane_error() -> None:
    """The API commands' error wrapper lets it through instead of blaming the control plane
    ("control plane did not answer: [Errno 32] Broken pipe")."""
    from meshctl.commands.calls import reports_errors

    @reports_errors
    def prints(_: argparse.Namespace) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    with pytest.raises(BrokenPipeError):
        prints(argparse.Namespace(control_plane=None))

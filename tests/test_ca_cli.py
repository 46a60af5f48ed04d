"""Tests for `meshctl certs init` and `meshctl certs show`."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from meshctl.ca import CaFiles, fingerprint, rotate_root, trusted_roots
from meshctl.commands import certs
from tests.test_cli_support import run_group


def run(*argv: str) -> int:
    """``meshctl certs ...`` with ``argv``."""
    return run_group(certs, *argv)


def test_init_creates_the_ca_and_prints_its_chain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`certs init` writes the CA (keys 0600) and prints the intermediate and root."""
    directory = tmp_path / "certs"
    assert run("certs", "init", "--dir", str(directory), "--trust-domain", "demo.local") == 0
    out = capsys.readouterr().out
    assert "trust domain demo.local" in out
    assert out.count("identity   spiffe://demo.local") == 2
    assert "intermediate" in out and "root (signing)" in out and "not after" in out
    assert stat.S_IMODE(CaFiles(directory).ca_key.stat().st_mode) == 0o600


def test_init_twice_fails_without_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second `certs init` exits 1 with a reason; `--force` replaces the CA."""
    directory = str(tmp_path / "certs")
    assert run("certs", "init", "--dir", directory) == 0
    assert run("certs", "init", "--dir", directory) == 1
    assert "already holds a CA" in capsys.readouterr().err
    assert run("certs", "init", "--dir", directory, "--force") == 0


def test_init_with_own_root_says_the_key_was_not_copied(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bringing a root copies its certificate only, and the command says so."""
    assert run("certs", "init", "--dir", str(tmp_path / "corp")) == 0
    corp = CaFiles(tmp_path / "corp")
    argv = ["--root-cert", str(corp.root_cert), "--root-key", str(corp.root_key)]
    assert run("certs", "init", "--dir", str(tmp_path / "mesh"), *argv) == 0
    assert "was not copied" in capsys.readouterr().out
    assert not CaFiles(tmp_path / "mesh").root_key.exists()


def test_show_lists_every_trusted_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`certs show` prints the intermediate then each root with its fingerprint."""
    directory = tmp_path / "certs"
    assert run("certs", "init", "--dir", str(directory)) == 0
    rotate_root(directory)
    capsys.readouterr()
    assert run("certs", "show", "--dir", str(directory)) == 0
    out = capsys.readouterr().out
    assert out.index("intermediate") < out.index("root (signing)") < out.index("not signing")
    for root in trusted_roots(CaFiles(directory)):
        assert fingerprint(root) in out


def test_show_without_a_ca_fails_with_a_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`certs show` on an empty directory exits 1 and suggests `certs init`."""
    assert run("certs", "show", "--dir", str(tmp_path)) == 1
    assert "meshctl certs init" in capsys.readouterr().err

"""A proxy that cannot start says why in one `error:` line and exits 2, never a traceback:
a listener address in use (data plane, admin, a TCP upstream) or an unreadable --identity-dir."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.ports import free_port

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port something else listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen(1)
        yield sock.getsockname()[1]


def _static(tmp_path: Path, outbound: int, admin: int) -> Path:
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump({
        "version": "start-errors", "node": {"service": "web", "namespace": "default"},
        "listeners": {"outbound": f"127.0.0.1:{outbound}", "admin": f"127.0.0.1:{admin}"},
        "mesh": {"mtls": "DISABLE"}, "services": {}}))
    return config


def _start(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", *args], capture_output=True,
                          text=True, timeout=30, check=False)


def _assert_one_error(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {expected}"], done.stderr


def test_an_outbound_port_in_use(tmp_path: Path, taken: int) -> None:
    done = _start("--config", str(_static(tmp_path, taken, free_port())))
    _assert_one_error(done, f"cannot listen on 127.0.0.1:{taken} (outbound listener): "
                            "Address already in use")


def test_an_admin_port_in_use(tmp_path: Path, taken: int) -> None:
    done = _start("--config", str(_static(tmp_path, free_port(), taken)))
    _assert_one_error(done, f"cannot listen on 127.0.0.1:{taken} (admin listener): "
                            "Address already in use")


def test_a_tcp_upstream_port_in_use(tmp_path: Path, taken: int) -> None:
    done = _start("--config", str(_static(tmp_path, free_port(), free_port())),
                  "--tcp-upstream", f"127.0.0.1:{taken}=db:5432")
    _assert_one_error(done, f"cannot listen on 127.0.0.1:{taken} (tcp upstream db:5432): "
                            "Address already in use")


def test_an_identity_dir_without_its_key(tmp_path: Path) -> None:
    identity = tmp_path / "identity"
    identity.mkdir()
    done = _start("--config", str(_static(tmp_path, free_port(), free_port())),
                  "--identity-dir", str(identity))
    _assert_one_error(done, f"--identity-dir {identity}: key.pem: No such file or directory")


def test_an_identity_dir_with_unreadable_material(tmp_path: Path) -> None:
    identity = tmp_path / "identity"
    identity.mkdir()
    for name in ("key.pem", "cert.pem", "bundle.pem"):
        (identity / name).write_text("not PEM\n")
    done = _start("--config", str(_static(tmp_path, free_port(), free_port())),
                  "--identity-dir", str(identity))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"error: --identity-dir {identity}: unreadable identity material" in done.stderr

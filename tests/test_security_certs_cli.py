"""`meshctl certs proxies`: each proxy's certificate expiry from GET /api/v1/proxies."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from meshctl.ca import BootstrapTokens, init_ca
from meshctl.commands import certs
from tests.proxyharness import Backends
from tests.test_cli_support import run_group


def rfc3339(ts: float) -> str:
    """An RFC 3339 UTC timestamp as the API reports certExpiry."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def api() -> Iterator[str]:
    """A stand-in control plane HTTP API serving a fixed proxy list on 127.0.0.1."""
    proxies = [
        {"name": "reviews-v1-9083", "service": "reviews", "namespace": "default",
         "certExpiry": rfc3339(time.time() + 3 * 3600 + 600)},
        {"name": "ratings-v1-9084", "service": "ratings", "namespace": "shop",
         "certExpiry": rfc3339(time.time() - 60)},
        {"name": "gateway-1", "service": "gateway", "namespace": "default", "certExpiry": None},
    ]

    async def handler(_request: web.Request) -> web.Response:
        return web.json_response({"storeVersion": 1, "proxies": proxies})

    app = web.Application()
    app.router.add_get("/api/v1/proxies", handler)
    backends = Backends()
    try:
        yield f"http://127.0.0.1:{backends.aiohttp(app)}"
    finally:
        backends.close()


def run(*argv: str, control_plane: str) -> int:
    """``meshctl certs ...`` with ``argv``, against the API at ``control_plane``."""
    return run_group(certs, *argv, control_plane=control_plane)


def test_lists_each_proxy_with_expiry(api: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Every proxy is listed with its expiry and time left; expired and missing are marked."""
    assert run("certs", "proxies", control_plane=api) == 0
    lines = capsys.readouterr().out.splitlines()
    # laid out as proxy-status: columns as wide as their widest cell, three spaces apart
    assert lines[0] == f"{'NAME':<15}   NAMESPACE/SERVICE   {'CERT-EXPIRY':<20}   LEFT"
    rows = {line.split()[0]: line for line in lines[1:]}
    assert "default/reviews" in rows["reviews-v1-9083"]
    assert rows["reviews-v1-9083"].split()[-1] in ("3h09m", "3h10m")
    assert rows["ratings-v1-9084"].split()[-1] == "EXPIRED"
    assert rows["gateway-1"].split()[-2:] == ["-", "-"]


def test_unreachable_control_plane_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """Without a control plane the command exits 1 with the one-line error every command
    prints (it printed `meshctl certs proxies: URL: <urlopen error ...>`)."""
    from tests.proxyharness import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert run("certs", "proxies", control_plane=url) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"error: cannot reach the control plane at {url}: "
                            "[Errno 111] Connection refused\n")


def test_an_answer_not_from_the_api_is_the_shared_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Another HTTP service at the address: the shared one-line `error: ... not as the Ami
    control plane API does` (it ended in a KeyError traceback before)."""
    async def not_the_api(_request: web.Request) -> web.Response:
        return web.json_response({"items": []})

    backends = Backends()
    try:
        app = web.Application()
        app.router.add_get("/api/v1/proxies", not_the_api)
        url = f"http://127.0.0.1:{backends.aiohttp(app)}"
        assert run("certs", "proxies", control_plane=url) == 1
    finally:
        backends.close()
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url} answered HTTP 200 but not as the Ami control plane "
                          "API does") and err.count("\n") == 1


def test_token_prints_the_services_bootstrap_token(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`certs token` prints the token that verifies for that service and no other."""
    init_ca(tmp_path / "certs")
    assert run("certs", "token", "--dir", str(tmp_path / "certs"), "--service", "reviews",
               control_plane="") == 0
    token = capsys.readouterr().out.strip()
    tokens = BootstrapTokens.load(tmp_path / "certs")
    assert tokens.verify(token, "default", "reviews")
    assert not tokens.verify(token, "default", "ratings")
    assert run("certs", "token", "--dir", str(tmp_path / "none"), "--service", "reviews",
               control_plane="") == 1


def test_token_gateway_prints_the_services_gateway_token(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`certs token --gateway --service ingress --namespace edge`: that service's gateway
    token, which is no service token and fits no other service."""
    init_ca(tmp_path / "certs")
    assert run("certs", "token", "--dir", str(tmp_path / "certs"), "--gateway", "--service",
               "ingress", "--namespace", "edge", control_plane="") == 0
    token = capsys.readouterr().out.strip()
    tokens = BootstrapTokens.load(tmp_path / "certs")
    assert tokens.kind(token, "edge", "ingress") == "gateway"
    assert tokens.kind(token, "default", "ingress") is None
    assert tokens.kind(token, "edge", "shop") is None


@pytest.mark.parametrize("gateway", [(), ("--gateway",)])
def test_token_for_the_control_planes_namespace_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], gateway: tuple[str, ...]) -> None:
    """ami-system/meshctl is the control plane's own identity: no token, a one-line error."""
    init_ca(tmp_path / "certs")
    assert run("certs", "token", "--dir", str(tmp_path / "certs"), *gateway, "--namespace",
               "ami-system", "--service", "meshctl", control_plane="") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("meshctl certs token: namespace 'ami-system' is reserved "
                                   "for the control plane")
    assert captured.err.count("\n") == 1

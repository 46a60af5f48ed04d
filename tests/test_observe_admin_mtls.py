"""The control plane's side of calls to sidecars' admin listeners: mTLS as itself, to the
identity each sidecar registered as; plaintext only to a sidecar without a certificate, and its
admin token then only to an address on this host.

Real static-mode proxies with identities from a CA in tmp play the sidecars; the control
plane's certificate is issued the way `meshctl serve` issues it.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from meshctl.ca import CertificateAuthority, add_trusted_root, init_ca
from meshctl.controlplane.admintls import AdminTls
from meshctl.controlplane.ca_service import CONTROL_PLANE_CERT_LIFETIME
from meshctl.controlplane.servercert import RenewingServerCertificate
from meshctl.observe.admincall import AdminCaller
from meshctl.observe.configdump import DumpUnavailable, fetch_config_dump
from meshctl.observe.scraper import Scraper
from tests.fakes import FakeClock
from tests.proxyharness import ProxyProcess
from tests.test_mtls_static import mint, write_identity_dir

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    directory = tmp_path_factory.mktemp("ca") / "certs"
    init_ca(directory)
    return CertificateAuthority(directory)


@pytest.fixture(scope="module")
def productpage(ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[ProxyProcess]:
    """A static proxy whose workload certificate is productpage's (its admin takes mTLS)."""
    tmp = tmp_path_factory.mktemp("pp")
    proc = ProxyProcess(tmp, {}, args=(
        "--identity-dir", str(write_identity_dir(tmp / "identity", mint(ca, "productpage")))))
    proc.config.write_text(yaml.safe_dump({"version": "static-1", "listeners": {
        "outbound": f"127.0.0.1:{proc.outbound}", "admin": f"127.0.0.1:{proc.admin}"}}))
    proc.start()
    yield proc
    proc.stop()


def listed(proc: ProxyProcess, service: str, cert: bool = True) -> dict[str, Any]:
    """The proxy as GET /api/v1/proxies lists it, registered as `service`."""
    return {"name": f"{service}-1", "service": service, "namespace": "default",
            "admin": f"127.0.0.1:{proc.admin}",
            "certExpiry": "2030-01-01T00:00:00Z" if cert else None}


def test_how_each_proxy_is_called(ca: CertificateAuthority) -> None:
    """With a certificate: https, the context for its registered identity and the token.
    Without one: plaintext, the token only to this host; another host's privileged routes
    are not called at all (the call says why)."""
    tls = AdminTls(RenewingServerCertificate(ca, []), ca)
    caller = AdminCaller(tls, lambda name: f"token-of-{name}")
    base = {"name": "r", "service": "reviews", "namespace": "default"}

    secure = caller.call({**base, "admin": "10.0.0.7:15000", "certExpiry": "2030-01-01T00:00Z"})
    assert secure.url("/tap") == "https://10.0.0.7:15000/tap" and not secure.refusal
    assert secure.context is tls.context("spiffe://cluster.local/ns/default/sa/reviews")
    assert secure.headers == {"Authorization": "Bearer token-of-r"}

    for host in ("127.0.0.1", "[::1]", "localhost"):
        local = caller.call({**base, "admin": f"{host}:15000", "certExpiry": None})
        assert local.base == f"http://{host}:15000" and not local.refusal
        assert local.headers == {"Authorization": "Bearer token-of-r"}

    remote = caller.call({**base, "admin": "10.0.0.7:15000", "certExpiry": None})
    assert remote.base == "http://10.0.0.7:15000" and remote.headers == {}
    assert "no workload certificate" in remote.refusal
    # A control plane with no certificate to present (tools, tests) never sends it off-host.
    no_tls = AdminCaller(None, lambda name: "t").call(
        {**base, "admin": "10.0.0.7:15000", "certExpiry": "2030-01-01T00:00Z"})
    assert no_tls.headers == {} and no_tls.refusal


async def test_scrape_and_config_dump_check_the_registered_identity(
        ca: CertificateAuthority, productpage: ProxyProcess) -> None:
    """Over mTLS the sidecar must be the service it registered as: productpage's certificate
    at an address registered as reviews is not scraped, and no config dump is asked of it."""
    caller = AdminCaller(AdminTls(RenewingServerCertificate(ca, []), ca))
    scraper = Scraper(lambda: {"proxies": [listed(productpage, "productpage"),
                                            listed(productpage, "reviews")]}, admin=caller)
    async with aiohttp.ClientSession() as session:
        await scraper.scrape_once(session)
    assert "productpage-1" not in scraper.errors
    assert scraper.window.latest("productpage-1") is not None
    assert ("is spiffe://cluster.local/ns/default/sa/productpage, not "
            "spiffe://cluster.local/ns/default/sa/reviews") in scraper.errors["reviews-1"]

    reviews_id = "spiffe://cluster.local/ns/default/sa/reviews"
    with pytest.raises(DumpUnavailable, match=re.escape(f"not {reviews_id}")):
        await fetch_config_dump(caller.call(listed(productpage, "reviews")))
    # The right identity gets through the handshake; a static proxy has no admin token, so
    # its privileged routes answer loopback only - and say so.
    with pytest.raises(DumpUnavailable, match="static mode"):
        await fetch_config_dump(caller.call(listed(productpage, "productpage")))


async def test_contexts_follow_the_renewed_certificate_and_new_roots(
        tmp_path: Path, productpage: ProxyProcess, ca: CertificateAuthority) -> None:
    """A renewed control-plane certificate and a root added to the trust bundle give new
    contexts (cached until then), which still pass the sidecar's handshake."""
    shutil.copytree(ca.files.directory, tmp_path / "certs")  # the same CA, to add a root to
    ca = CertificateAuthority(tmp_path / "certs")
    # 0.6 of a lifetime ago: the first certificate is due for renewal once the clock moves on
    # 0.6 lifetimes, to now, and every one it issues is valid for the sidecar
    clock = FakeClock(time.time() - 0.6 * CONTROL_PLANE_CERT_LIFETIME)
    own = RenewingServerCertificate(ca, [], clock=clock)
    tls = AdminTls(own, ca)
    sid = "spiffe://cluster.local/ns/default/sa/productpage"
    first = tls.context(sid)
    assert tls.context(sid) is first

    clock.now += 0.6 * CONTROL_PLANE_CERT_LIFETIME
    renewed = tls.context(sid)
    assert own.renewals == 1 and renewed is not first

    other = tmp_path / "other"
    init_ca(other)
    add_trusted_root(ca.files.directory, (other / "root-cert.pem").read_bytes())
    assert tls.context(sid) is not renewed

    scraper = Scraper(lambda: {"proxies": [listed(productpage, "productpage")]},
                      admin=AdminCaller(tls))
    async with aiohttp.ClientSession() as session:
        await scraper.scrape_once(session)
    assert scraper.errors == {}

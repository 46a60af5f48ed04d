"""The outside client's certificate reaches a service behind a sidecar: a trusted peer's
x-forwarded-client-cert is kept and the sidecar's element appended (Envoy's APPEND_FORWARD),
any other peer's, plaintext's and an app's removed.

Real processes: `meshctl serve`, an HTTPS gateway (`ingress`, `--gateway-client-ca` with a
partner CA made here), an `echo` sidecar (PERMISSIVE, access log on) before an echo app, a
`shop` sidecar; raw TLS clients present identities minted by the control plane's CA (what a
peer sidecar or another ingress would present). Static mode has its own proxy below.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from meshctl.ca import CertificateAuthority, spiffe_id_for
from proxy.identity import WorkloadIdentity, generate_key_and_csr
from tests import meshbuilder
from tests.certs import Issued, issue
from tests.helpers_mesh import MeshProcess, all_synced, apply_yaml, start_sidecar, wait_for
from tests.proxyharness import (
    PROXY_ROOT,
    Backends,
    Message,
    dry_run,
    echo_app,
    free_port,
    get,
    read_response,
    roundtrip,
)
from tests.test_gateway_mtls import expected_xfcc, name
from tests.test_mtls_static import (
    client_ctx,
    echoed_headers,
    mesh_ca,
    start_proxy,
    tls_roundtrip,
)

pytestmark = pytest.mark.timeout(180)
TD = "cluster.local"
DEADLINE = 10.0
SYNC = 30.0  # a push reaching every sidecar; a gateway's registration expiring (grace 2 s)
XFCC = "x-forwarded-client-cert"
FORGED = (f"{XFCC}: URI=spiffe://partner.example/admin\r\n"
          "x_forwarded_client_cert: URI=spiffe://partner.example/root\r\n")


def sid(service: str, namespace: str = "default") -> str:
    return spiffe_id_for(TD, namespace, service)


ECHO, INGRESS, SHOP = sid("echo"), sid("ingress"), sid("shop")
NGINX = sid("nginx", "edge")  # an ingress that is not an Ami gateway (MeshConfig lists it)


def mint(ca: CertificateAuthority, spiffe_id: str, *, gateway: bool = False) -> WorkloadIdentity:
    """An identity as the CA issues it; `gateway`: with the gateway marker (as to a gateway
    registered with its gateway token)."""
    key_pem, csr_pem = generate_key_and_csr(spiffe_id)
    issued = ca.sign_csr(csr_pem, spiffe_id, 3600, gateway=gateway)
    return WorkloadIdentity.from_pem(key_pem, issued.cert_pem, issued.chain_pem,
                                     ca.trust_bundle())


def xfcc_seen(resp: Message) -> list[str]:
    """The XFCC values the echo app got, in every spelling (`_` for `-` too)."""
    assert resp.status == 200, resp
    return [v for k, v in echoed_headers(resp) if k.replace("_", "-") == XFCC]


def resources(gateway_port: int, trusted: list[str] | None = None) -> str:
    extra = f", trustedXfccIdentities: {json.dumps(trusted)}" if trusted else ""
    return f"""\
apiVersion: ami.mesh/v1alpha1
kind: MeshConfig
metadata: {{name: default}}
spec: {{mtls: {{mode: STRICT}}{extra}}}
---
apiVersion: ami.mesh/v1alpha1
kind: PeerAuthentication
metadata: {{name: echo-permissive}}
spec: {{selector: {{service: echo}}, mtls: {{mode: PERMISSIVE}}}}
---
apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {{name: ingress}}
spec:
  listen: 127.0.0.1:{gateway_port}
  rules: [{{destination: echo}}]
"""


@dataclass
class Mesh:
    tmp: Path
    cp: MeshProcess
    ca: CertificateAuthority
    echo: MeshProcess
    shop: MeshProcess
    gateway: MeshProcess
    gateway_port: int
    server: Issued  # the gateway's HTTPS certificate
    partner: Issued  # a client certificate of the partner CA the gateway trusts
    gateway_tls: list[str]  # its --gateway-cert, --gateway-key, --gateway-client-ca arguments

    @property
    def inbound(self) -> int:
        return int(self.echo.info["inbound"].rsplit(":", 1)[1])

    def port(self, proc: MeshProcess, listener: str) -> int:
        return int(proc.info[listener].rsplit(":", 1)[1])

    async def via_gateway(self, extra: str = "", port: int | None = None) -> Message:
        """One HTTP/1.1 request through the HTTPS gateway (or another on `port`) with the
        partner's certificate."""
        ctx = ssl.create_default_context(cadata=self.server.cert_pem.decode())
        cert, key = self.partner.write(self.tmp, "partner")
        ctx.load_cert_chain(cert, key)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            "127.0.0.1", port or self.gateway_port, ssl=ctx), DEADLINE)
        try:
            writer.write(get("echo", "/who", extra))
            return await asyncio.wait_for(read_response(reader), DEADLINE)
        finally:
            writer.close()

    async def as_peer(self, identity: WorkloadIdentity, extra: str = FORGED) -> Message:
        """A request straight to echo's inbound listener over mTLS as `identity`."""
        return await tls_roundtrip(self.inbound, client_ctx(identity, self.ca.trust_bundle()),
                                   get("echo", "/peer", extra=extra))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    tmp = tmp_path_factory.mktemp("xfcc")
    partner_ca = issue(name("Partner CA"), ca=True)
    server = issue(name("gateway", "Operator"),
                   san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    partner = issue(name("shop-client"), partner_ca, san=[
        x509.UniformResourceIdentifier("spiffe://partner.example/shop"),
        x509.DNSName("shop.partner.example")])
    cert, key = server.write(tmp, "gateway-tls")
    client_ca, _ = partner_ca.write(tmp, "partner-ca")
    backends = Backends()
    with meshbuilder.Mesh(tmp) as mesh:
        mesh.defer(backends.close)
        app = backends.aiohttp(echo_app())
        gateway_port = free_port()
        mesh.control_plane(resources(gateway_port), warmup=0.0)
        echo = mesh.sidecar("echo", app=f"127.0.0.1:{app}",
                            extra=["--app-protocol", "http1", "--access-log", "on"])
        shop = mesh.sidecar("shop")
        gateway_tls = ["--gateway-cert", str(cert), "--gateway-key", str(key),
                       "--gateway-client-ca", str(client_ca)]
        gateway = mesh.gateway("ingress-gw", "ingress", port=gateway_port, extra=gateway_tls)
        mesh.wait_synced(SYNC)
        yield Mesh(tmp, mesh.cp, CertificateAuthority(mesh.cp.info["certs_dir"]), echo, shop,
                   gateway, gateway_port, server, partner, gateway_tls)


async def test_the_partner_certificate_reaches_the_app_behind_the_sidecar(mesh: Mesh) -> None:
    """Client certificate → gateway (`Hash…;Subject…;URI…;DNS…`) → echo's sidecar, which
    keeps the gateway's element and appends its own after a comma; what the partner forged
    itself (both spellings) was removed by the gateway."""
    resp = await mesh.via_gateway(FORGED)
    assert xfcc_seen(resp) == [f"{expected_xfcc(mesh.partner)},By={ECHO};URI={INGRESS}"]


async def test_http2_through_the_gateway_and_the_sidecar_too(mesh: Mesh) -> None:
    """`curl --http2 --cert`: the gateway keeps HTTP/2 to echo's sidecar (its access log says
    so), whose HTTP/2 inbound appends as its HTTP/1.1 one does."""
    cert, key = mesh.partner.write(mesh.tmp, "curl-partner")
    server_cert = mesh.tmp / "gateway-tls.crt"
    done = await asyncio.to_thread(subprocess.run, [
        "curl", "-sS", "--http2", "--cacert", str(server_cert), "--cert", str(cert),
        "--key", str(key), "--max-time", "10", "-H", f"{XFCC}: URI=forged", "-H",
        "x_forwarded_client_cert: URI=forged", "-w", "\n%{http_version}",
        f"https://127.0.0.1:{mesh.gateway_port}/over-h2"], capture_output=True, text=True,
        timeout=30)
    assert done.returncode == 0, done.stderr
    body, version = done.stdout.rsplit("\n", 1)
    assert version == "2"
    seen = [v for k, v in json.loads(body)["headers"] if k.lower().replace("_", "-") == XFCC]
    assert seen == [f"{expected_xfcc(mesh.partner)},By={ECHO};URI={INGRESS}"]

    def inbound_line() -> dict[str, Any] | None:
        for line in mesh.echo.output().splitlines():
            if line.startswith("{") and '"/over-h2"' in line:
                entry: dict[str, Any] = json.loads(line)
                if entry["listener"] == "inbound":
                    return entry
        return None

    assert (await asyncio.to_thread(wait_for, inbound_line, DEADLINE,
                                    "echo's access log line"))["protocol"] == "HTTP/2"


async def test_a_peer_that_is_not_a_gateway_cannot_pass_it_on(mesh: Mesh) -> None:
    """A mesh identity that is no gateway (shop's, as its sidecar presents it) sending XFCC
    straight to echo's inbound: removed in both spellings, only the sidecar's element stays."""
    resp = await mesh.as_peer(mint(mesh.ca, SHOP))
    assert xfcc_seen(resp) == [f"By={ECHO};URI={SHOP}"]


async def test_apps_cannot_forge_it_through_their_sidecar_or_the_gateway(mesh: Mesh) -> None:
    """An app's XFCC is removed by its own sidecar's outbound listener, and by the gateway's
    outbound listener for an app beside the gateway: the gateway is trusted because nothing
    it sends carries an XFCC it did not set."""
    via_shop = await roundtrip(mesh.port(mesh.shop, "outbound"), get("echo", "/app", FORGED))
    assert xfcc_seen(via_shop) == [f"By={ECHO};URI={SHOP}"]
    via_gateway_app = await roundtrip(mesh.port(mesh.gateway, "outbound"),
                                      get("echo", "/app", FORGED))
    assert xfcc_seen(via_gateway_app) == [f"By={ECHO};URI={INGRESS}"]


async def test_plaintext_gets_no_xfcc_at_all(mesh: Mesh) -> None:
    """echo is PERMISSIVE: a plaintext caller has no identity, so what it sends is removed
    and nothing is set."""
    assert xfcc_seen(await roundtrip(mesh.inbound, get("echo", "/plain", FORGED))) == []


async def test_mesh_config_identities_are_honoured_and_withdrawn(mesh: Mesh) -> None:
    """An ingress that is not an Ami gateway: its XFCC is removed until MeshConfig lists its
    id, kept once the push arrives, and removed again once the id is taken out."""
    nginx = mint(mesh.ca, NGINX)
    element = 'Hash=ab12;Subject="CN=shop-client,O=Partner"'
    assert xfcc_seen(await mesh.as_peer(nginx, f"{XFCC}: {element}\r\n")) == \
        [f"By={ECHO};URI={NGINX}"]

    async def seen() -> list[str]:
        return xfcc_seen(await mesh.as_peer(nginx, f"{XFCC}: {element}\r\n"
                                                   "x_forwarded_client_cert: URI=x\r\n"))

    apply_yaml(mesh.cp, resources(mesh.gateway_port, [NGINX]))
    await until(seen, [f"{element},By={ECHO};URI={NGINX}"])
    apply_yaml(mesh.cp, resources(mesh.gateway_port))
    await until(seen, [f"By={ECHO};URI={NGINX}"])


async def test_a_gateway_is_trusted_while_it_is_registered(mesh: Mesh, tmp_path: Path) -> None:
    """A second gateway (`edge`): XFCC from a certificate of its identity with the gateway
    marker is kept once it has registered, and removed once it is gone and its grace has
    passed; from one of its identity without the marker it is removed throughout."""
    edge, unmarked = mint(mesh.ca, sid("edge"), gateway=True), mint(mesh.ca, sid("edge"))

    async def seen(peer: WorkloadIdentity = edge) -> list[str]:
        return xfcc_seen(await mesh.as_peer(peer, f"{XFCC}: URI=spiffe://partner.example/a\r\n"))

    assert await seen() == [f"By={ECHO};URI={sid('edge')}"]
    proc = start_sidecar(tmp_path, mesh.cp.info["grpc"], "edge", "v1", mode="gateway",
                         extra=["--gateway-listen", f"127.0.0.1:{free_port()}"])
    try:
        await until(seen, [f"URI=spiffe://partner.example/a,By={ECHO};URI={sid('edge')}"])
        assert await seen(unmarked) == [f"By={ECHO};URI={sid('edge')}"]
    finally:
        proc.stop()
    await until(seen, [f"By={ECHO};URI={sid('edge')}"])


def meshctl(mesh: Mesh, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "meshctl", "--control-plane",
                           mesh.cp.info["api"], *argv], capture_output=True, text=True,
                          cwd=PROXY_ROOT, timeout=60)


def proxy_status(mesh: Mesh) -> dict[str, dict[str, Any]]:
    done = meshctl(mesh, "proxy-status", "-o", "json")
    assert done.returncode == 0, done.stderr
    return {p["name"]: p for p in json.loads(done.stdout)}


async def test_a_gateway_with_a_service_token_is_not_trusted_until_it_has_its_gateway_token(
        mesh: Mesh, tmp_path: Path) -> None:
    """`legacy` registers in gateway mode with its plain service token: accepted (as before
    gateway tokens), shown untrusted, warned of by `meshctl check` with the command that fixes
    it, and its XFCC is removed once every sidecar runs a snapshot made after it registered.
    The same gateway restarted with `certs token --gateway`'s token is trusted: the token is
    what made the difference."""
    legacy = mint(mesh.ca, sid("legacy"), gateway=True)  # only the registration differs

    async def seen() -> list[str]:
        return xfcc_seen(await mesh.as_peer(legacy, f"{XFCC}: URI=spiffe://partner.example/b\r\n"))

    gateway_args = ["--gateway-listen", f"127.0.0.1:{free_port()}", "--name", "legacy-gw"]
    proc = start_sidecar(tmp_path, mesh.cp.info["grpc"], "legacy", "v1", mode="gateway",
                         token="service", extra=gateway_args)
    try:
        names = {"legacy-gw", "ingress-gw", mesh.echo.info["name"]}
        await asyncio.to_thread(wait_for, lambda: all_synced(mesh.cp, names), SYNC,
                                "every proxy synced with legacy-gw registered")
        status = proxy_status(mesh)
        assert (status["legacy-gw"]["trustedGateway"], status["ingress-gw"]["trustedGateway"],
                status[mesh.echo.info["name"]]["trustedGateway"]) == (False, True, None)
        assert await seen() == [f"By={ECHO};URI={sid('legacy')}"]
        check = meshctl(mesh, "check")
        assert ("‼ gateways trusted: registered with a service token, so sidecars drop the "
                "x-forwarded-client-cert they send: legacy-gw (default/legacy)") in check.stdout
        assert ("meshctl certs token --gateway --service legacy --namespace default > FILE"
                in check.stdout), check.stdout
        described = meshctl(mesh, "describe", "gateway", "ingress")
        assert "  ingress-gw: trusted (gateway token)" in described.stdout, described.stdout
        assert "  legacy-gw: NOT trusted (service token)" in described.stdout
    finally:
        proc.stop()
    proc = start_sidecar(tmp_path, mesh.cp.info["grpc"], "legacy", "v1", mode="gateway",
                         token="gateway", extra=gateway_args)
    try:
        await until(seen, [f"URI=spiffe://partner.example/b,By={ECHO};URI={sid('legacy')}"])
        assert proxy_status(mesh)["legacy-gw"]["trustedGateway"] is True
        assert "‼ gateways trusted" not in meshctl(mesh, "check").stdout
    finally:
        proc.stop()


async def presented_certificate(mesh: Mesh, proc: MeshProcess) -> x509.Certificate:
    """The workload certificate a proxy presents (its admin listener takes mTLS with it)."""
    ctx = client_ctx(mint(mesh.ca, SHOP), mesh.ca.trust_bundle())
    _, writer = await asyncio.wait_for(asyncio.open_connection(
        "127.0.0.1", mesh.port(proc, "admin"), ssl=ctx), DEADLINE)
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)
    finally:
        writer.close()


async def test_a_proxy_of_the_gateways_service_with_its_plain_token_cannot_pass_xfcc_on(
        mesh: Mesh, tmp_path: Path) -> None:
    """The gap the gateway marker closes: a second HTTPS gateway of ingress's service, started
    with ingress's plain service token, has ingress's SPIFFE id and verifies the partner's
    certificate as ingress-gw does; but the CA gave it no gateway marker, so echo's sidecar
    drops the XFCC it forwards (trusting by id, it kept it). ingress-gw's own certificate has
    the marker, and its XFCC still arrives."""
    port = free_port()
    rogue = start_sidecar(tmp_path, mesh.cp.info["grpc"], "ingress", "v1", mode="gateway",
                          token="service", extra=[
                              "--gateway-listen", f"127.0.0.1:{port}", *mesh.gateway_tls,
                              "--name", "ingress-rogue"])
    try:
        names = {"ingress-rogue", "ingress-gw", mesh.echo.info["name"]}
        await asyncio.to_thread(wait_for, lambda: all_synced(mesh.cp, names), SYNC,
                                "every proxy synced with ingress-rogue registered")
        assert xfcc_seen(await mesh.via_gateway(port=port)) == [f"By={ECHO};URI={INGRESS}"]
        assert xfcc_seen(await mesh.via_gateway()) == \
            [f"{expected_xfcc(mesh.partner)},By={ECHO};URI={INGRESS}"]
        from meshctl.api.gatewaycert import is_gateway_certificate
        from meshctl.ca.spiffe import uri_sans

        rogue_cert = await presented_certificate(mesh, rogue)
        gateway_cert = await presented_certificate(mesh, mesh.gateway)
        assert uri_sans(rogue_cert) == uri_sans(gateway_cert) == [INGRESS]
        assert not is_gateway_certificate(rogue_cert)
        assert is_gateway_certificate(gateway_cert)
    finally:
        rogue.stop()


def build_before_the_marker(tmp: Path) -> Path:
    """This build's proxy as one from before the gateway marker asks for its certificate:
    without its name (CertificateRequest.proxy), so the CA cannot mark it."""
    from meshctl.api.build import VERSION
    from tests.test_proxy_versions import other_build

    tree = other_build(tmp, VERSION)
    agent = tree / "proxy" / "identity_agent.py"
    text = agent.read_text()
    assert text.count("token=cfg.token, proxy=cfg.proxy)") == 1
    agent.write_text(text.replace("token=cfg.token, proxy=cfg.proxy)", "token=cfg.token)"))
    return tree


async def test_a_gateway_from_before_the_marker_is_not_trusted_and_check_says_what_to_do(
        mesh: Mesh, tmp_path: Path) -> None:
    """Version skew: a gateway whose proxy predates the marker, started with its gateway token,
    registers as a trusted gateway, but its certificate is issued unmarked (the control plane
    logs why), so echo's sidecar drops the partner certificate it forwards; proxy-status shows
    `gatewayCertificate: false` and `meshctl check` names it and says to upgrade it."""
    port = free_port()
    old = start_sidecar(tmp_path, mesh.cp.info["grpc"], "oldgw", "v1", mode="gateway",
                        source=build_before_the_marker(tmp_path), extra=[
                            "--gateway-listen", f"127.0.0.1:{port}", *mesh.gateway_tls,
                            "--name", "old-gw"])
    try:
        names = {"old-gw", "ingress-gw", mesh.echo.info["name"]}
        await asyncio.to_thread(wait_for, lambda: all_synced(mesh.cp, names), SYNC,
                                "every proxy synced with old-gw registered")
        assert xfcc_seen(await mesh.via_gateway(port=port)) == [f"By={ECHO};URI={sid('oldgw')}"]
        assert ("issuing default/oldgw's gateway token a certificate without the gateway marker"
                in mesh.cp.output())
        status = proxy_status(mesh)
        assert (status["old-gw"]["trustedGateway"], status["old-gw"]["gatewayCertificate"],
                status["ingress-gw"]["gatewayCertificate"],
                status[mesh.echo.info["name"]]["gatewayCertificate"]) == (True, False, True, None)
        check = meshctl(mesh, "check").stdout
        assert ("‼ gateway certificates marked: registered with their gateway token, but their "
                "certificate has no gateway marker, so sidecars drop the x-forwarded-client-"
                "cert they send: old-gw (default/oldgw, proxy ") in check, check
        assert "upgrade each to a proxy of this control plane's version and restart it" in check
        assert "‼ gateways trusted" not in check
    finally:
        old.stop()


async def test_a_csr_cannot_obtain_the_gateway_marker(mesh: Mesh) -> None:
    """IssueCertificate on the control plane's TLS gRPC port: a CSR carrying the marker's
    policy with ingress's service token, naming the registered gateway, gets a certificate
    without it; ingress's gateway token naming a proxy that is not its registered gateway is
    refused; naming the registered gateway, it gets the marker (as ingress-gw does)."""
    import grpc
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from grpc import aio

    from meshctl.api import mesh_pb2
    from meshctl.api.gatewaycert import gateway_policy, is_gateway_certificate
    from meshctl.ca import BootstrapTokens
    from proxy.identity_agent import grpc_issuer

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(INGRESS)]),
                          critical=True)
           .add_extension(gateway_policy(), critical=False).sign(key, hashes.SHA256()))
    tokens = BootstrapTokens.load(mesh.cp.info["certs_dir"])
    issue = grpc_issuer(mesh.cp.info["grpc"], Path(mesh.cp.info["certs_dir"]) / "trust-bundle.pem")

    async def leaf(token: str, proxy: str) -> x509.Certificate:
        response = await issue(mesh_pb2.CertificateRequest(
            csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode(), service="ingress",
            namespace="default", token=token, proxy=proxy))
        return x509.load_pem_x509_certificates(response.cert_chain_pem.encode())[0]

    assert not is_gateway_certificate(await leaf(tokens.token_for("default", "ingress"),
                                                 "ingress-gw"))
    gateway_token = tokens.gateway_token_for("default", "ingress")
    with pytest.raises(aio.AioRpcError) as err:
        await leaf(gateway_token, mesh.echo.info["name"])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert is_gateway_certificate(await leaf(gateway_token, "ingress-gw"))


async def test_another_services_gateway_token_gets_nothing(mesh: Mesh,
                                                           tmp_path: Path) -> None:
    """A gateway started as `thief` with ingress's gateway token: the control plane refuses
    it a certificate and a registration; it is never listed."""
    from meshctl.ca import BootstrapTokens

    token_file = tmp_path / "stolen.token"
    token_file.write_text(BootstrapTokens.load(mesh.cp.info["certs_dir"]).gateway_token_for(
        "default", "ingress"))
    proc = start_sidecar(tmp_path, mesh.cp.info["grpc"], "thief", "v1", mode="gateway",
                         wait_ready=False, extra=[
                             "--gateway-listen", f"127.0.0.1:{free_port()}", "--name", "thief",
                             "--token-file", str(token_file)])
    try:
        for line in ("refused a certificate for default/thief: bad bootstrap token",
                     "refused proxy thief from"):
            await asyncio.to_thread(wait_for, lambda line=line: line in mesh.cp.output(), SYNC,
                                    f"the control plane's {line!r}")
        assert "thief" not in proxy_status(mesh)
    finally:
        proc.stop()


async def test_a_sidecar_with_a_gateway_token_is_refused_and_told_why(
        mesh: Mesh, tmp_path: Path) -> None:
    """A sidecar given its service's gateway token: the control plane refuses its Register,
    and the sidecar's log says the token is for gateways and which command makes the right
    one; it is never listed."""
    proc = start_sidecar(tmp_path, mesh.cp.info["grpc"], "stray", "v1", token="gateway",
                         wait_ready=False, extra=["--name", "stray"])
    try:
        await asyncio.to_thread(
            wait_for, lambda: "PERMISSION_DENIED register.token: a gateway token of "
            "default/stray, for proxies in --mode gateway only; give a sidecar its service "
            "token (`meshctl certs token --service stray --namespace default`)" in proc.output(),
            SYNC, "the sidecar's log of the refusal")
        assert "stray" not in proxy_status(mesh)
    finally:
        proc.stop()


async def until(observe: Any, expected: list[str], timeout: float = SYNC) -> None:
    """Observe until it equals `expected` (a config push landing), failing at the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while (last := await observe()) != expected:
        assert loop.time() < end, f"still {last}, expected {expected}"
        await asyncio.sleep(0.2)  # polling interval of a bounded wait


# --- static mode ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def static(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, ...]]:
    """A static `echo` sidecar (STRICT, HTTP/1.1 app) listing `ingress` in its file."""
    tmp = tmp_path_factory.mktemp("xfcc-static")
    ca = mesh_ca(tmp / "ca")
    backends = Backends()
    port = free_port()
    proc = None
    try:
        app = backends.aiohttp(echo_app())
        proc = start_proxy(tmp / "echo", mint(ca, ECHO), {
            "node": {"service": "echo", "labels": {"version": "v1"}},
            "app": f"127.0.0.1:{app}", "appProtocol": "http1",
            "mesh": {"mtls": "STRICT", "trustedXfccIdentities": [INGRESS]}}, inbound=port)
        yield tmp, ca, port
    finally:
        if proc is not None:
            proc.stop()
        backends.close()


def curl_h2(tmp: Path, identity: WorkloadIdentity, port: int) -> list[str]:
    """An HTTP/2 request (ALPN h2) as `identity` with forged XFCC: what the app got."""
    cert, key = tmp / "h2-client.crt", tmp / "h2-client.key"
    cert.write_bytes(identity.cert_pem + identity.chain_pem)
    key.write_bytes(identity.key_pem)
    done = subprocess.run([
        # -k: the sidecar's certificate names a SPIFFE id, not 127.0.0.1; its chain is
        # checked by the peers that verify SPIFFE ids, not what this test is about
        "curl", "-sS", "-k", "--http2", "--cert", str(cert), "--key", str(key),
        "--max-time", "10", "-H", f"{XFCC}: URI=spiffe://partner.example/h2", "-H",
        "x_forwarded_client_cert: URI=x", "-w", "\n%{http_version}",
        f"https://127.0.0.1:{port}/h2"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, version = done.stdout.rsplit("\n", 1)
    assert version == "2"
    return [v for k, v in json.loads(body)["headers"] if k.lower().replace("_", "-") == XFCC]


async def test_static_mode_keeps_it_from_the_listed_peer_only(static: tuple[Any, ...]) -> None:
    """`mesh.trustedXfccIdentities` in a static file: the listed peer's XFCC is kept (HTTP/1.1
    and HTTP/2), another peer's removed (both spellings)."""
    tmp, ca, port = static
    ingress, shop = mint(ca, INGRESS), mint(ca, SHOP)
    trust = ca.trust_bundle()
    kept = await tls_roundtrip(port, client_ctx(ingress, trust), get("echo", "/", extra=FORGED))
    assert xfcc_seen(kept) == [f"URI=spiffe://partner.example/admin,By={ECHO};URI={INGRESS}"]
    other = await tls_roundtrip(port, client_ctx(shop, trust), get("echo", "/", extra=FORGED))
    assert xfcc_seen(other) == [f"By={ECHO};URI={SHOP}"]
    assert await asyncio.to_thread(curl_h2, tmp, ingress, port) == \
        [f"URI=spiffe://partner.example/h2,By={ECHO};URI={INGRESS}"]
    assert await asyncio.to_thread(curl_h2, tmp, shop, port) == [f"By={ECHO};URI={SHOP}"]


def test_a_static_file_with_another_trust_domains_id_stops_the_start(tmp_path: Path) -> None:
    done = dry_run(tmp_path, config=yaml.safe_dump({"mesh": {
        "trustDomain": "corp.example", "trustedXfccIdentities": [INGRESS]}}))
    assert done.returncode == 2, done.stderr
    assert (f"mesh.trustedXfccIdentities[0]: '{INGRESS}' is of trust domain 'cluster.local', "
            "not the mesh's 'corp.example'") in done.stderr

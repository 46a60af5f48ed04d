"""Who may call a sidecar's privileged admin routes: a loopback peer, or the control plane.

The admin listener may be bound to a container network (compose) so the control plane can
scrape it; /shutdown, /logging/access, POST /logging (log levels), /tap and /config_dump must
still not be open to that network.
Once the sidecar has a certificate the control plane calls them over mTLS (its SPIFFE id and
the admin token), and the token alone, in plaintext, is refused: anyone on the path could read
it. The real-socket tests reach the listener over this host's non-loopback address.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from meshctl.ca import CertificateAuthority
from meshctl.controlplane.ca_service import control_plane_certificate
from proxy.adminhttp import AdminServer, Request, Response, json_response
from proxy.tls import load_pem_pair
from tests.helpers_mesh import PYTHON, ROOT, MeshProcess, http_get, wait_for
from tests.meshbuilder import Mesh
from tests.proxyharness import metric_value
from tests.resources import mesh_config
from tests.test_mtls_static import mint

pytestmark = pytest.mark.timeout(180)


async def _ok(_: Request) -> Response:
    return json_response({"ok": True})


CP = "spiffe://cluster.local/ns/ami-system/sa/meshctl"
OTHER = "spiffe://cluster.local/ns/default/sa/productpage"


def _server(token: str = "", own_id: str | None = None) -> AdminServer:
    """An admin server; `own_id`: the SPIFFE id of the certificate the sidecar has, if any."""
    contexts = None if own_id is None else SimpleNamespace(
        identity=SimpleNamespace(spiffe_id=own_id))
    return AdminServer({("GET", "/metrics"): _ok, ("POST", "/shutdown"): _ok},
                       privileged=frozenset({("POST", "/shutdown")}), token=token,
                       tls=lambda: contexts)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(("peer", "authorization", "token", "status"), [
    ("127.0.0.1", "", "", 200),              # same host: always
    ("::1", "", "", 200),
    ("::ffff:127.0.0.1", "", "", 200),       # IPv4 loopback on a dual-stack socket
    ("10.0.0.7", "", "s3cret", 403),         # another container, no token
    ("10.0.0.7", "Bearer wrong", "s3cret", 403),
    ("10.0.0.7", "Bearer s3cret", "s3cret", 200),
    ("10.0.0.7", "bearer s3cret", "s3cret", 200),
    ("10.0.0.7", "Bearer ", "", 403),        # static mode has no token: loopback only
    ("", "", "", 403),                       # unknown peer (e.g. a Unix socket): refused
])
async def test_privileged_route_needs_loopback_or_the_token(peer: str, authorization: str,
                                                            token: str, status: int) -> None:
    """A sidecar without a certificate (no --token-file; static mode has no token either)."""
    response = await _server(token).handle(
        Request("POST", "/shutdown", {}, b"", peer, authorization))
    assert response.status == status
    if status == 403:
        assert b"privileged" in response.body


OWN = "spiffe://cluster.local/ns/default/sa/reviews"


@pytest.mark.parametrize(("peer", "authorization", "peer_id", "token", "status", "says"), [
    # over mTLS: the control plane's identity, with the token too
    ("10.0.0.9", "Bearer s3cret", CP, "s3cret", 200, ""),
    ("10.0.0.9", "", CP, "s3cret", 403, "admin token"),
    ("10.0.0.9", "Bearer wrong", CP, "s3cret", 403, "admin token"),
    ("10.0.0.9", "Bearer s3cret", OTHER, "s3cret", 403, "only the control plane"),
    ("127.0.0.1", "Bearer s3cret", OTHER, "s3cret", 403, "only the control plane"),
    ("10.0.0.9", "Bearer s3cret", "spiffe://elsewhere/ns/ami-system/sa/meshctl", "s3cret", 403,
     "only the control plane"),  # another trust domain's control plane
    ("10.0.0.9", "Bearer ", CP, "", 403, "static mode"),
    # in plaintext, once the sidecar has a certificate: loopback only, the token is useless
    ("10.0.0.7", "Bearer s3cret", None, "s3cret", 403, "over mTLS"),
    ("127.0.0.1", "", None, "s3cret", 200, ""),
])
async def test_with_a_certificate_privileged_routes_answer_the_control_plane_over_mtls(
        peer: str, authorization: str, peer_id: str | None, token: str, status: int,
        says: str) -> None:
    response = await _server(token, own_id=OWN).handle(
        Request("POST", "/shutdown", {}, b"", peer, authorization, peer_id))
    assert response.status == status
    if status == 403:
        body = json.loads(response.body)
        assert says in body["error"] and body["reason"] == "not_authorized"


async def test_plain_routes_are_open_to_remote_callers() -> None:
    """Scrapes and probes come from the control plane / kubelet: no token needed."""
    response = await _server("s3cret").handle(Request("GET", "/metrics", {}, b"", "10.0.0.7"))
    assert response.status == 200


def _non_loopback_address() -> str | None:
    """An IPv4 address of this host that is not loopback: the source of its default route,
    else one its host name resolves to."""
    candidates: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("203.0.113.1", 9))  # TEST-NET-3; a UDP connect sends no packet
            candidates.append(str(s.getsockname()[0]))
        except OSError:
            pass
    try:
        candidates += [str(info[4][0]) for info in
                       socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)]
    except OSError:
        pass
    return next((a for a in candidates if not a.startswith("127.")), None)


@pytest.fixture(scope="module")
def host_ip() -> str:
    address = _non_loopback_address()
    if address is None:
        if os.environ.get("AMI_REQUIRE_TOOLS") == "1":
            pytest.fail("no non-loopback IPv4 address on this host")
        pytest.skip("no non-loopback IPv4 address on this host")
    return address


def _request(url: str, method: str = "GET", token: str = "") -> tuple[int, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, host_ip: str
         ) -> Iterator[tuple[MeshProcess, MeshProcess, str]]:
    """A control plane and a reviews sidecar whose admin listener is on the host's address."""
    with Mesh(Path(tmp_path_factory.mktemp("adminaccess"))) as mesh:
        mesh.control_plane(mesh_config(mtls="DISABLE"), warmup=0.0)
        backend = mesh.backend("reviews-v1")
        with socket.socket() as s:
            s.bind((host_ip, 0))
            admin = f"{host_ip}:{s.getsockname()[1]}"
        sidecar = mesh.sidecar("reviews", app=backend.info["address"], wait_ready=False,
                               extra=["--admin", admin])
        wait_for(lambda: http_get(f"http://{admin}/ready")[0] == 200, 30, "sidecar ready")
        mesh.wait_synced(20)
        # The control plane calls it over mTLS once it knows the sidecar has a certificate
        # (DISABLE is about traffic between sidecars: they get one all the same).
        mesh.wait_certified()
        yield mesh.cp, sidecar, admin


def test_remote_caller_gets_metrics_but_not_the_privileged_routes(
        mesh: tuple[MeshProcess, MeshProcess, str]) -> None:
    _, sidecar, admin = mesh
    assert _request(f"http://{admin}/metrics")[0] == 200
    for method, path in (("POST", "/shutdown"), ("POST", "/logging/access?enabled=true"),
                         ("POST", "/logging?level=debug"), ("GET", "/tap"),
                         ("GET", "/config_dump")):
        status, body = _request(f"http://{admin}{path}", method)
        assert status == 403, (method, path)
        assert "privileged" in json.loads(body)["error"]
    status, body = _request(f"http://{admin}/logging")  # reading the levels is not
    assert status == 200 and json.loads(body)["loggers"]["ami.proxy"] == "info"
    assert _request(f"http://{admin}/shutdown", "POST", token="guessed")[0] == 403
    assert sidecar.alive()


def test_control_plane_taps_a_remote_sidecar_with_its_token(
        mesh: tuple[MeshProcess, MeshProcess, str]) -> None:
    """`meshctl tap` through serve reaches a sidecar on another address: the control plane
    presents the token the sidecar registered; the token is not in proxy-status."""
    control, sidecar, admin = mesh
    status, body = _request(control.info["api"] + "/api/v1/proxies")
    assert status == 200
    [listed] = [p for p in json.loads(body)["proxies"] if p["name"] == sidecar.info["name"]]
    assert listed["admin"] == admin
    assert "token" not in json.dumps(listed).lower()

    events: list[dict[str, object]] = []

    def tap() -> None:
        req = urllib.request.Request(control.info["api"] + "/api/v1/tap?n=1&service=reviews",
                                     headers={"Authorization": f"Bearer {control.info['token']}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            for line in resp:
                if line.startswith(b"data: "):
                    events.append(json.loads(line[6:]))
                    return

    tapper = threading.Thread(target=tap)
    tapper.start()

    def tapped() -> bool:
        assert http_get(f"http://{sidecar.info['inbound']}/tapped", {"Host": "reviews"})[0] == 200
        return bool(events)
    wait_for(tapped, 20, "a tap event from the remote sidecar", interval=0.3)
    tapper.join(5)
    assert events[0]["path"] == "/tapped" and events[0]["listener"] == "inbound"


def _admin_token(control: MeshProcess, name: str) -> str:
    """The admin token a sidecar registered, as the control plane keeps it (registry.json)."""
    def token() -> str:
        doc = json.loads((control.info["state_dir"] / "registry.json").read_text())
        return next((p["admin_token"] for p in doc["proxies"] if p["name"] == name), "")
    return wait_for(token, 20, "the admin token in registry.json")


def _client(control: MeshProcess, cert: tuple[bytes, bytes] | None) -> ssl.SSLContext:
    """A TLS client trusting the mesh roots, presenting `cert` (chain, key) or no certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(control.info["certs_dir"] / "trust-bundle.pem"))
    if cert is not None:
        load_pem_pair(ctx, *cert)
    return ctx


def _tls_request(admin: str, ctx: ssl.SSLContext, method: str, path: str,
                 token: str = "") -> tuple[int, dict[str, Any]]:
    """One request over TLS to `admin`; (status, JSON body). Refusals raise."""
    host, _, port = admin.rpartition(":")
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(f"{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}"
                    "Content-Length: 0\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    if not data:
        raise ConnectionError("closed without an answer")
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_plaintext_token_from_another_host_is_refused_once_the_sidecar_has_a_certificate(
        mesh: tuple[MeshProcess, MeshProcess, str]) -> None:
    """Sniffed off the network, the admin token is useless: in plaintext, from another host,
    even the right one gets 403 (use mTLS); the sidecar keeps running."""
    control, sidecar, admin = mesh
    token = _admin_token(control, sidecar.info["name"])
    for method, path in (("GET", "/config_dump"), ("GET", "/tap"), ("POST", "/shutdown")):
        status, body = _request(f"http://{admin}{path}", method, token=token)
        assert status == 403, (method, path)
        assert "over mTLS" in json.loads(body)["error"]
    assert sidecar.alive()
    # Prometheus and probes keep plaintext.
    assert _request(f"http://{admin}/metrics")[0] == 200
    assert _request(f"http://{admin}/ready")[0] == 200


def test_over_mtls_only_the_control_plane_identity_with_the_token_is_let_in(
        mesh: tuple[MeshProcess, MeshProcess, str]) -> None:
    """On the TLS side of the admin port: the control plane's certificate and the token get
    the config dump; another mesh identity is refused even with the token; the control
    plane's certificate without the token is refused too; plain routes answer anyone."""
    control, sidecar, admin = mesh
    token = _admin_token(control, sidecar.info["name"])
    ca = CertificateAuthority(control.info["certs_dir"])
    own = control_plane_certificate(ca, [])
    as_control_plane = _client(control, (own.chain_pem, own.key_pem))
    status, dump = _tls_request(admin, as_control_plane, "GET", "/config_dump", token)
    assert status == 200 and dump["version"]

    productpage = mint(ca, "productpage")
    as_productpage = _client(control, (productpage.cert_pem + productpage.chain_pem,
                                       productpage.key_pem))
    status, body = _tls_request(admin, as_productpage, "GET", "/config_dump", token)
    assert status == 403
    assert "only the control plane (spiffe://cluster.local/ns/ami-system/sa/meshctl)" \
        in body["error"] and productpage.spiffe_id in body["error"]
    assert _tls_request(admin, as_control_plane, "GET", "/config_dump")[0] == 403
    assert _tls_request(admin, as_productpage, "GET", "/stats")[0] == 200


def test_a_tls_client_without_a_certificate_gets_no_answer(
        mesh: tuple[MeshProcess, MeshProcess, str]) -> None:
    """The TLS side requires a mesh client certificate: the handshake is refused (counted
    as ami_tls_handshake_failures_total{listener="admin"}), not even /metrics answers."""
    control, _, admin = mesh

    def failures() -> float:
        return metric_value(_request(f"http://{admin}/metrics")[1].decode(),
                            "ami_tls_handshake_failures_total", listener="admin")

    before = failures()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _tls_request(admin, _client(control, None), "GET", "/metrics")
    wait_for(lambda: failures() > before, 10, "the refused handshake in the metrics")


def test_meshctl_proxy_config_and_stat_reach_a_remote_sidecar_over_mtls(
        mesh: tuple[MeshProcess, MeshProcess, str]) -> None:
    """`meshctl proxy-config` (the privileged /config_dump, which the control plane fetches
    over mTLS), `proxy-config log --level` (the privileged POST /logging) and `meshctl stat`
    (scrapes, over mTLS too) work for a sidecar on another host."""
    control, sidecar, _ = mesh
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("AMI_")},
           "AMI_TOKEN": control.info["token"], "AMI_CONTROL_PLANE": control.info["api"]}

    def meshctl(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([PYTHON, "-m", "meshctl", *argv, "-o", "json"], env=env,
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    dump = meshctl("proxy-config", sidecar.info["name"])
    assert dump.returncode == 0, dump.stderr
    assert json.loads(dump.stdout)["listeners"]["inbound"] == sidecar.info["inbound"]
    # POST /logging too (privileged): set, then back to the start-up levels
    for change in (("--level", "ami.proxy.router:debug"), ("--reset",)):
        levels = meshctl("proxy-config", "log", sidecar.info["name"], *change)
        assert levels.returncode == 0, levels.stderr
        expected = "debug" if change[0] == "--level" else "info"
        assert json.loads(levels.stdout)["loggers"]["ami.proxy.router"] == expected

    def served_by_reviews() -> bool:
        assert http_get(f"http://{sidecar.info['inbound']}/stat",
                        {"Host": "reviews"})[0] == 200
        stat = meshctl("stat", "reviews", "--window", "1m")
        assert stat.returncode == 0, stat.stderr
        return any(r["service"] == "reviews" and r["rps"] > 0
                   for r in json.loads(stat.stdout)["rows"])
    wait_for(served_by_reviews, 30, "reviews in meshctl stat", interval=0.5)

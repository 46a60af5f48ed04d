"""Real certificate rotation over gRPC under steady traffic, and through a control-plane outage.

Two in-process sidecars (ProxyServer, real sockets) get 1-minute certificates from the CA
service over TLS gRPC via their identity agents; the renew window is shortened so several
rotations fit in seconds (the rotation itself, key + CSR + issuance + context swap, is real).
Upstream connections are recycled every few requests so handshakes keep using fresh certs.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from grpc import aio

from meshctl.api.kinds import MeshConfigSpec
from meshctl.ca import BootstrapTokens, CertificateAuthority, fingerprint, init_ca
from meshctl.cli import main as cli
from meshctl.controlplane.ca_service import CertificateService, control_plane_certificate
from meshctl.controlplane.xds import start_grpc_server
from proxy.config import Address, Snapshot
from proxy.identity import WorkloadIdentity
from proxy.identity_agent import IdentityAgent, IdentityAgentConfig, grpc_issuer
from proxy.server import ProxyOptions, ProxyServer
from tests.proxyharness import Backends, echo_app, eventually, free_port, get, read_response
from tests.test_mtls_static import sid
from tests.test_security_ca_service import _Servicer

ROTATIONS = 3
DEADLINE = 60.0
WINDOW = (0.04, 0.06)  # of a 60 s lifetime: a renewal every ~3 s


@dataclass
class Sidecars:
    """The running pieces: gRPC server, both proxies, their agents, the CA service."""

    grpc: aio.Server
    service: CertificateService
    client: ProxyServer
    client_agent: IdentityAgent
    server_agent: IdentityAgent
    outbound: int
    tasks: list[asyncio.Task[None]]


async def sidecar(ca_dir: Path, bundle: Path, target: str, service: str,
                  snapshot: dict[str, Any], listeners: dict[str, Address]
                  ) -> tuple[ProxyServer, IdentityAgent, asyncio.Task[None]]:
    """A ProxyServer that gets its first certificate over gRPC before binding its listeners."""
    server = ProxyServer(ProxyOptions(listeners=listeners))
    server.apply(Snapshot.from_dict(snapshot))
    token = BootstrapTokens.load(ca_dir).token_for("default", service)
    agent = IdentityAgent(server, grpc_issuer(target, bundle),
                          IdentityAgentConfig(service=service, token=token, renew_window=WINDOW,
                                              retry_base=0.1, retry_max=0.5))
    await asyncio.wait_for(agent.obtain(), DEADLINE)
    await server.start_listeners()
    return server, agent, asyncio.create_task(agent.run())


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Sidecars]:
    """CA service on TLS gRPC with certificateTTL 1m; productpage -> reviews -> echo backend."""
    init_ca(tmp_path / "ca")
    ca = CertificateAuthority(tmp_path / "ca")
    service = CertificateService(ca, BootstrapTokens.load(tmp_path / "ca"),
                                 lambda: MeshConfigSpec(certificate_ttl=60.0))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.trust_bundle())
    creds = control_plane_certificate(ca, ["127.0.0.1"]).credentials()
    grpc_server, port = await start_grpc_server(_Servicer(service), "127.0.0.1:0", creds)
    target = f"127.0.0.1:{port}"
    backends = Backends()
    servers: list[ProxyServer] = []
    tasks: list[asyncio.Task[None]] = []
    try:
        app = backends.aiohttp(echo_app())
        inbound, outbound = free_port(), free_port()
        reviews, reviews_agent, t1 = await sidecar(
            tmp_path / "ca", bundle, target, "reviews",
            {"node": {"service": "reviews"}, "app": f"127.0.0.1:{app}",
             "mesh": {"mtls": "STRICT"}}, {"inbound": Address("127.0.0.1", inbound)})
        servers.append(reviews)
        tasks.append(t1)
        client, client_agent, t2 = await sidecar(
            tmp_path / "ca", bundle, target, "productpage",
            {"node": {"service": "productpage"}, "mesh": {"mtls": "STRICT"},
             "services": {"reviews": {
                 "endpoints": [{"address": f"127.0.0.1:{inbound}", "identity": sid("reviews")}],
                 "policy": {"connectionPool": {"maxRequestsPerConnection": 3}}}}},
            {"outbound": Address("127.0.0.1", outbound)})
        servers.append(client)
        tasks.append(t2)
        yield Sidecars(grpc_server, service, client, client_agent, reviews_agent, outbound,
                       tasks)
    finally:
        for task in tasks:
            task.cancel()
        for server in servers:
            await server.shutdown(deadline=1.0)
        await grpc_server.stop(None)
        backends.close()


async def traffic(port: int, stop: asyncio.Event, statuses: list[int]) -> None:
    """Requests back to back on one keep-alive client connection until `stop` is set."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not stop.is_set():
            writer.write(get("reviews", "/r"))
            resp = await asyncio.wait_for(read_response(reader), 10)
            statuses.append(resp.status)
            if (resp.header("connection") or "").lower() == "close":
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await asyncio.sleep(0.01)  # pacing: steady traffic, not a load test
    finally:
        writer.close()


async def all_served_after_more(load: asyncio.Task[None], stop: asyncio.Event,
                                statuses: list[int], what: str) -> None:
    """Let 20 more requests through, stop the traffic, and check every request got a 200."""
    count = len(statuses)
    await eventually(lambda: len(statuses) >= count + 20 or load.done(), DEADLINE, what=what)
    stop.set()
    await load
    assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]


async def test_rotations_under_traffic_lose_no_request(mesh: Sidecars) -> None:
    """Several real rotations on both sides while requests flow: every request succeeds."""
    first = (mesh.client.tls.identity.cert_pem, mesh.server_agent.identity)
    stop, statuses = asyncio.Event(), list[int]()
    load = asyncio.create_task(traffic(mesh.outbound, stop, statuses))
    await eventually(lambda: min(mesh.client_agent.renewals, mesh.server_agent.renewals)
                     >= ROTATIONS or load.done(), DEADLINE, what=f"{ROTATIONS} rotations")
    await all_served_after_more(load, stop, statuses, "traffic after rotation")
    assert mesh.client.tls.identity.cert_pem != first[0]
    assert mesh.server_agent.identity is not first[1]
    assert mesh.service.issued >= 2 + 2 * ROTATIONS


async def test_certificates_keep_working_while_control_plane_is_down(mesh: Sidecars) -> None:
    """With the gRPC server stopped, renewals fail but the current certs still carry traffic."""
    await mesh.grpc.stop(None)
    failures = mesh.client_agent.failures
    await eventually(lambda: mesh.client_agent.failures >= failures + 3, DEADLINE,
                     what="failed renewals")
    stop, statuses = asyncio.Event(), list[int]()
    load = asyncio.create_task(traffic(mesh.outbound, stop, statuses))
    await eventually(lambda: len(statuses) >= 30 or load.done(), DEADLINE,
                     what="traffic during the outage")
    stop.set()
    await load
    assert set(statuses) == {200}
    assert mesh.client_agent.cert_expiry is not None
    assert mesh.client_agent.cert_expiry > time.time()
    assert not mesh.client_agent.status()["expired"]


async def test_trust_bundle_rotates_to_a_new_root_without_losing_a_request(
        mesh: Sidecars, tmp_path: Path) -> None:
    """Trust old+new root, switch signing to the new root, retire the old: traffic never fails.

    The documented three steps (docs/security.md); each step reaches the sidecars through their
    ordinary renewals, so both sides always trust the root of the other's certificate.
    """
    ca_dir = tmp_path / "ca"
    init_ca(tmp_path / "next")  # the new root (its own intermediate is not used)
    new_root = (tmp_path / "next" / "root-cert.pem").read_bytes()
    stop, statuses = asyncio.Event(), list[int]()
    load = asyncio.create_task(traffic(mesh.outbound, stop, statuses))

    async def both_run(what: str, holds: Callable[[WorkloadIdentity], bool]) -> None:
        """Until the identity each side serves has what the step gave it. Not a count of
        renewals since the step: one in flight during it (issued before, installed after)
        counts but carries the state before the step."""
        await eventually(lambda: all(identity is not None and holds(identity) for identity in (
            mesh.client.tls.identity, mesh.server_agent.identity)) or load.done(),
            DEADLINE, what=what)

    def roots(identity: WorkloadIdentity) -> list[str]:
        return [fingerprint(c) for c in x509.load_pem_x509_certificates(identity.bundle_pem)]

    def signed_under_new_root(identity: WorkloadIdentity) -> bool:
        intermediate = x509.load_pem_x509_certificates(identity.chain_pem)[-1]
        try:
            intermediate.verify_directly_issued_by(x509.load_pem_x509_certificate(new_root))
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    old_fp = fingerprint(x509.load_pem_x509_certificate(
        (ca_dir / "root-cert.pem").read_bytes()))
    new_fp = fingerprint(x509.load_pem_x509_certificate(new_root))
    # 1. trust both roots
    next_root = str(tmp_path / "next" / "root-cert.pem")
    assert cli(["certs", "trust", next_root, "--dir", str(ca_dir)]) == 0
    await both_run("both roots trusted on both sides", lambda i: new_fp in roots(i))
    assert new_root.strip() in mesh.client.tls.identity.bundle_pem
    # 2. sign with the new root; the CA service notices the new intermediate by itself
    assert cli(["certs", "rotate", "--dir", str(ca_dir), "--root-cert",
                str(tmp_path / "next" / "root-cert.pem"), "--root-key",
                str(tmp_path / "next" / "root-key.pem")]) == 0
    await both_run("certificates of the new root on both sides", signed_under_new_root)
    # 3. stop trusting the old root, once no certificate in use is under it (docs step 3)
    assert cli(["certs", "retire", old_fp, "--dir", str(ca_dir)]) == 0
    await both_run("the old root retired on both sides", lambda i: old_fp not in roots(i))
    await all_served_after_more(load, stop, statuses, "traffic after the rotation")
    for identity in (mesh.client.tls.identity, mesh.server_agent.identity):
        assert identity is not None
        assert signed_under_new_root(identity)
        assert roots(identity) == [new_fp]  # only the new root is trusted now

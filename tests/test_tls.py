"""mTLS handshakes over 127.0.0.1 with the mesh contexts: who gets in, who is refused, and why."""

from __future__ import annotations

import asyncio
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import proxy.tls
from meshctl.ca import CertificateAuthority, init_ca, rotate_root, spiffe_id_for
from meshctl.ca.builders import make_workload_cert
from meshctl.ca.files import cert_pem, load_signing_key
from proxy.identity import IdentityError, WorkloadIdentity, generate_key_and_csr
from proxy.tls import TlsContexts, client_context, server_context, verify_peer

DEADLINE = 5.0
REVIEWS = "spiffe://cluster.local/ns/default/sa/reviews"
PRODUCTPAGE = "spiffe://cluster.local/ns/default/sa/productpage"


def mint(
    ca: CertificateAuthority, service: str, ttl: float = 3600, bundle: bytes = b""
) -> WorkloadIdentity:
    """Issue an identity the way a sidecar gets one: own key, CSR, signed by `ca`."""
    spiffe_id = spiffe_id_for(ca.trust_domain, "default", service)
    key_pem, csr_pem = generate_key_and_csr(spiffe_id)
    issued = ca.sign_csr(csr_pem, spiffe_id, ttl)
    return WorkloadIdentity.from_pem(
        key_pem, issued.cert_pem, issued.chain_pem, bundle or ca.trust_bundle()
    )


def new_ca(directory: Path, clock: Callable[[], float] = time.time) -> CertificateAuthority:
    """A fresh CA in `directory`."""
    init_ca(directory, clock=clock)
    return CertificateAuthority(directory, clock=clock)


@dataclass
class Seen:
    """What the server saw on one connection: the peer id, or why the connection was refused."""

    peer: str | None = None
    error: BaseException | None = None


@dataclass
class Listener:
    """A running test server: its port and the outcomes of the connections it accepted."""

    port: int
    seen: asyncio.Queue[Seen]

    async def next(self) -> Seen:
        """The outcome of the next connection (waits with a deadline)."""
        return await asyncio.wait_for(self.seen.get(), DEADLINE)


@asynccontextmanager
async def mesh_server(
    ctx: ssl.SSLContext, expected: set[str] | None = None
) -> AsyncIterator[Listener]:
    """An echo server on 127.0.0.1 doing the mTLS handshake with `ctx`, then greeting the peer.

    It upgrades with start_tls so handshake errors reach this code (asyncio would swallow them).
    """
    seen: asyncio.Queue[Seen] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(ctx)
            peer = verify_peer(writer.get_extra_info("ssl_object"), expected)
        except (ssl.SSLError, ConnectionError, IdentityError) as e:
            await seen.put(Seen(error=e))
            writer.transport.abort()
            return
        await seen.put(Seen(peer=peer))
        writer.write(f"hello {peer}\n".encode())
        while line := await reader.readline():
            writer.write(line)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield Listener(server.sockets[0].getsockname()[1], seen)


async def dial(port: int, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a TLS connection to 127.0.0.1:port with `ctx`."""
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, ssl=ctx), DEADLINE)


async def refused_client_read(port: int, ctx: ssl.SSLContext) -> bytes:
    """Connect and read; a refused client gets no data (EOF or a reset), never the greeting."""
    try:
        reader, writer = await dial(port, ctx)
        data = await asyncio.wait_for(reader.read(), DEADLINE)
        writer.close()
        return data
    except (ssl.SSLError, ConnectionError):
        return b""


def verify_error(seen: Seen) -> str:
    """The certificate verification message of a refused connection."""
    assert isinstance(seen.error, ssl.SSLCertVerificationError), seen
    return seen.error.verify_message


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    """The mesh CA."""
    return new_ca(tmp_path / "ca")


@pytest.fixture
def other_ca(tmp_path: Path) -> CertificateAuthority:
    """An unrelated CA with the same trust domain name."""
    return new_ca(tmp_path / "other")


async def test_mesh_certs_connect_and_both_sides_see_spiffe_ids(ca: CertificateAuthority) -> None:
    """Two mesh identities complete mTLS (TLS 1.3, ALPN http/1.1) and each sees the other's id."""
    server, client = mint(ca, "reviews"), mint(ca, "productpage")
    async with mesh_server(server_context(server), expected={PRODUCTPAGE}) as srv:
        reader, writer = await dial(srv.port, client_context(client))
        tls = writer.get_extra_info("ssl_object")
        assert verify_peer(tls, {REVIEWS}) == REVIEWS
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "http/1.1"
        assert await reader.readline() == f"hello {PRODUCTPAGE}\n".encode()
        assert (await srv.next()).peer == PRODUCTPAGE
        writer.close()


async def test_client_without_certificate_is_refused(ca: CertificateAuthority) -> None:
    """STRICT: a client that presents no certificate fails the handshake."""
    nocert = ssl.create_default_context(cadata=ca.trust_bundle().decode())
    nocert.check_hostname = False
    async with mesh_server(server_context(mint(ca, "reviews"))) as srv:
        assert await refused_client_read(srv.port, nocert) == b""
        seen = await srv.next()
        assert isinstance(seen.error, ssl.SSLError)
        assert seen.error.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE"


async def test_client_without_certificate_is_let_in_when_not_required(
    ca: CertificateAuthority,
) -> None:
    """require_client_cert=False accepts a cert-less client, and verify_peer then reports it."""
    nocert = ssl.create_default_context(cadata=ca.trust_bundle().decode())
    nocert.check_hostname = False
    ctx = server_context(mint(ca, "reviews"), require_client_cert=False)
    async with mesh_server(ctx) as srv:
        assert await refused_client_read(srv.port, nocert) == b""
        seen = await srv.next()
        assert isinstance(seen.error, IdentityError) and "no certificate" in str(seen.error)


async def test_certificate_from_another_ca_is_refused_both_ways(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    """A cert chaining to an untrusted root is refused by the server and by the client."""
    stranger = mint(other_ca, "productpage", bundle=ca.trust_bundle())
    async with mesh_server(server_context(mint(ca, "reviews"))) as srv:
        assert await refused_client_read(srv.port, client_context(stranger)) == b""
        assert "unable to get local issuer certificate" in verify_error(await srv.next())
    async with mesh_server(server_context(mint(other_ca, "reviews"))) as srv:
        with pytest.raises(ssl.SSLCertVerificationError, match="local issuer"):
            await dial(srv.port, client_context(mint(ca, "productpage")))


async def test_expired_certificate_is_refused_both_ways(tmp_path: Path) -> None:
    """A cert issued in the past with a fake clock, now expired, is refused on either side."""
    past = time.time() - 3 * 86_400
    new_ca(tmp_path / "ca", clock=lambda: past)
    yesterday_ca = CertificateAuthority(tmp_path / "ca", clock=lambda: past + 3600)
    ca = CertificateAuthority(tmp_path / "ca")
    expired = mint(yesterday_ca, "productpage", ttl=3600)
    assert expired.not_after < time.time()
    async with mesh_server(server_context(mint(ca, "reviews"))) as srv:
        assert await refused_client_read(srv.port, client_context(expired)) == b""
        assert verify_error(await srv.next()) == "certificate has expired"
    async with mesh_server(server_context(expired)) as srv:
        with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
            await dial(srv.port, client_context(mint(ca, "reviews")))


async def test_unexpected_spiffe_id_is_refused_by_verify_peer(ca: CertificateAuthority) -> None:
    """A valid mesh cert with an identity policy does not expect is refused after the handshake."""
    async with mesh_server(server_context(mint(ca, "reviews")), expected={REVIEWS}) as srv:
        client = client_context(mint(ca, "productpage"))
        assert await refused_client_read(srv.port, client) == b""
        seen = await srv.next()
        assert isinstance(seen.error, IdentityError) and PRODUCTPAGE in str(seen.error)
        _, writer = await dial(srv.port, client)
        with pytest.raises(IdentityError):
            verify_peer(writer.get_extra_info("ssl_object"), {"spiffe://cluster.local/ns/x/sa/y"})
        writer.close()


async def test_identity_outside_the_name_constraint_is_refused(ca: CertificateAuthority) -> None:
    """A cert the intermediate's key signed for another trust domain fails chain verification."""
    key_pem, csr_pem = generate_key_and_csr("spiffe://evil.example/ns/default/sa/admin")
    csr = x509.load_pem_x509_csr(csr_pem)
    now = time.time()
    forged = make_workload_cert(
        csr.public_key(),  # type: ignore[arg-type]
        "spiffe://evil.example/ns/default/sa/admin",
        ca.ca_cert,
        load_signing_key(ca.files.ca_key),
        now - 60,
        now + 3600,
    )
    evil = WorkloadIdentity.from_pem(
        key_pem, cert_pem(forged), cert_pem(ca.ca_cert), ca.trust_bundle()
    )
    async with mesh_server(server_context(mint(ca, "reviews"))) as srv:
        assert await refused_client_read(srv.port, client_context(evil)) == b""
        assert "subtree" in verify_error(await srv.next())


def legacy_client(
    ca: CertificateAuthority, version: ssl.TLSVersion, ciphers: str
) -> ssl.SSLContext:
    """A client offering only `version` and `ciphers` (security level 0 lets it offer old ones)."""
    ctx = client_context(mint(ca, "productpage"))
    ctx.set_ciphers(f"{ciphers}:@SECLEVEL=0")
    ctx.minimum_version = version
    ctx.maximum_version = version
    return ctx


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
async def test_tls_1_1_client_is_refused(ca: CertificateAuthority) -> None:
    """A client limited to TLS 1.1 is refused by the server for its protocol version."""
    async with mesh_server(server_context(mint(ca, "reviews"))) as srv:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await dial(srv.port, legacy_client(ca, ssl.TLSVersion.TLSv1_1, "ALL"))
        seen = await srv.next()
        assert isinstance(seen.error, ssl.SSLError)
        assert seen.error.reason == "UNSUPPORTED_PROTOCOL"


@pytest.mark.parametrize(
    ("cipher", "accepted"),
    [
        ("ECDHE-ECDSA-AES128-SHA", False),
        ("ECDHE-ECDSA-AES128-SHA256", False),
        ("ECDHE-ECDSA-AES128-GCM-SHA256", True),
        ("ECDHE-ECDSA-CHACHA20-POLY1305", True),
    ],
)
async def test_tls_1_2_accepts_only_aead_ciphers(
    ca: CertificateAuthority, cipher: str, accepted: bool
) -> None:
    """Over TLS 1.2 a CBC (non-AEAD) suite gets no shared cipher; GCM and ChaCha20 work."""
    client = legacy_client(ca, ssl.TLSVersion.TLSv1_2, cipher)
    async with mesh_server(server_context(mint(ca, "reviews"))) as srv:
        if accepted:
            _, writer = await dial(srv.port, client)
            assert writer.get_extra_info("ssl_object").cipher()[0] == cipher
            assert (await srv.next()).peer == PRODUCTPAGE
            writer.close()
        else:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await dial(srv.port, client)
            seen = await srv.next()
            assert isinstance(seen.error, ssl.SSLError) and seen.error.reason == "NO_SHARED_CIPHER"


def test_contexts_disable_compression_and_renegotiation(ca: CertificateAuthority) -> None:
    """Both contexts turn off compression and renegotiation and need TLS 1.2 or newer."""
    identity = mint(ca, "reviews")
    for ctx in (server_context(identity), client_context(identity)):
        assert ctx.options & ssl.OP_NO_COMPRESSION
        assert ctx.options & ssl.OP_NO_RENEGOTIATION
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert not ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


async def test_rotation_keeps_open_connections_and_new_ones_get_the_new_cert(
    ca: CertificateAuthority,
) -> None:
    """After TlsContexts.update, an open connection still works and a new one sees the new cert."""
    first, second = mint(ca, "reviews"), mint(ca, "reviews")
    contexts = TlsContexts(first)
    client = client_context(mint(ca, "productpage"))
    async with mesh_server(contexts.listener) as srv:
        reader1, writer1 = await dial(srv.port, client)
        await reader1.readline()
        assert _peer_cert(writer1) == _der(first)
        old_client = contexts.client
        contexts.update(second)
        assert contexts.client is not old_client and contexts.identity is second
        reader2, writer2 = await dial(srv.port, client)
        assert _peer_cert(writer2) == _der(second)
        writer1.write(b"still here\n")
        await reader2.readline()
        assert await asyncio.wait_for(reader1.readline(), DEADLINE) == b"still here\n"
        writer1.close()
        writer2.close()


async def test_listener_picks_up_a_new_trust_bundle(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    """Updating TlsContexts with a wider bundle lets the same listener accept the new root."""
    server = mint(ca, "reviews")
    contexts = TlsContexts(server)
    newcomer = client_context(mint(other_ca, "productpage", bundle=ca.trust_bundle()))
    async with mesh_server(contexts.listener) as srv:
        assert await refused_client_read(srv.port, newcomer) == b""
        assert "local issuer" in verify_error(await srv.next())
        both = ca.trust_bundle() + other_ca.trust_bundle()
        contexts.update(
            WorkloadIdentity.from_pem(server.key_pem, server.cert_pem, server.chain_pem, both)
        )
        _, writer = await dial(srv.port, newcomer)
        assert (await srv.next()).peer == PRODUCTPAGE
        writer.close()


def _greeting(port: int, ctx: ssl.SSLContext,
              session: ssl.SSLSession | None = None) -> tuple[bytes, ssl.SSLSession | None]:
    """Connect on a blocking socket offering `session`; the greeting line and the session."""
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw, \
            ctx.wrap_socket(raw, session=session) as tls:
        return tls.recv(200), tls.session


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_retired_root_cannot_resume_a_session(
    ca: CertificateAuthority, other_ca: CertificateAuthority, version: ssl.TLSVersion
) -> None:
    """Once a root leaves the bundle, a peer it signed cannot get back in by resuming a TLS
    session (resumption skips chain verification): server contexts offer no resumption."""
    server = mint(ca, "reviews")
    both = ca.trust_bundle() + other_ca.trust_bundle()
    contexts = TlsContexts(
        WorkloadIdentity.from_pem(server.key_pem, server.cert_pem, server.chain_pem, both))
    client = client_context(mint(other_ca, "productpage", bundle=ca.trust_bundle()))
    client.maximum_version = version
    async with mesh_server(contexts.listener) as srv:
        greeting, session = await asyncio.to_thread(_greeting, srv.port, client)
        assert greeting == f"hello {PRODUCTPAGE}\n".encode()
        assert (await srv.next()).peer == PRODUCTPAGE
        contexts.update(server)  # the other root is retired
        try:
            greeting, _ = await asyncio.to_thread(_greeting, srv.port, client, session)
        except (ssl.SSLError, OSError):
            greeting = b""
        assert greeting == b""
        assert "local issuer" in verify_error(await srv.next())


async def test_old_and_new_roots_interoperate_after_root_rotation(tmp_path: Path) -> None:
    """During the overlap a cert under the old root and one under the new root accept each other."""
    old_ca = new_ca(tmp_path / "ca")
    key_pem, csr_pem = generate_key_and_csr(REVIEWS)
    old_issued = old_ca.sign_csr(csr_pem, REVIEWS, 3600)
    rotate_root(tmp_path / "ca")
    new_ca_ = CertificateAuthority(tmp_path / "ca")
    bundle = new_ca_.trust_bundle()
    old_server = WorkloadIdentity.from_pem(
        key_pem, old_issued.cert_pem, old_issued.chain_pem, bundle
    )
    new_client = mint(new_ca_, "productpage")
    async with mesh_server(server_context(old_server)) as srv:
        _, writer = await dial(srv.port, client_context(new_client))
        assert verify_peer(writer.get_extra_info("ssl_object"), None) == REVIEWS
        assert (await srv.next()).peer == PRODUCTPAGE
        writer.close()


async def test_temp_dir_fallback_loads_keys_and_leaves_nothing(
    ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without memfd the key goes through a private temp dir that is gone after loading."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(proxy.tls, "_USE_MEMFD", False)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    server = server_context(mint(ca, "reviews"))
    assert list(scratch.iterdir()) == []
    async with mesh_server(server) as srv:
        _, writer = await dial(srv.port, client_context(mint(ca, "productpage")))
        assert (await srv.next()).peer == PRODUCTPAGE
        writer.close()


def _der(identity: WorkloadIdentity) -> bytes:
    return x509.load_pem_x509_certificate(identity.cert_pem).public_bytes(
        serialization.Encoding.DER
    )


def _peer_cert(writer: asyncio.StreamWriter) -> bytes:
    tls: ssl.SSLObject = writer.get_extra_info("ssl_object")
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der

"""mTLS contexts for the mesh: strict settings, SPIFFE peer checks, rotation without drops.

Hostname checking is off on purpose: mesh peers are identified by the one SPIFFE URI SAN of
their certificate (`verify_peer`), checked against the identities policy expects.

The key must reach OpenSSL through a path (`load_cert_chain` has no in-memory form). On Linux
it goes through an anonymous memfd (`/proc/self/fd/N`), so it never touches a filesystem; else
through a private 0700 temp dir whose 0600 files are deleted right after loading.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from proxy.identity import IdentityError, WorkloadIdentity, peer_identity, peer_spiffe_id

ALPN = ("http/1.1",)
# A sidecar's inbound listener also speaks HTTP/2, to the sidecars that carry HTTP/2 requests
# (their connections offer `h2` alone; HTTP/1.1 ones offer `http/1.1` alone).
# `ami-tcp`: a TCP service's bytes (proxy.tcpwire), offered by callers reaching one.
MESH_SERVER_ALPN = ("h2", "http/1.1", "ami-tcp")
H2_ALPN = ("h2",)
TCP_ALPN = ("ami-tcp",)
# The HTTPS gateway: browsers get HTTP/2 (the app's sidecar downgrades it for an HTTP/1.1 app).
GATEWAY_ALPN = ("h2", "http/1.1")
# TLS 1.2 suites: forward secret and AEAD only. TLS 1.3 suites are all AEAD already.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
_USE_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def server_context(
    identity: WorkloadIdentity, *, require_client_cert: bool = True
) -> ssl.SSLContext:
    """A server context presenting `identity`; clients must present a mesh cert unless told not."""
    ctx = _context(ssl.PROTOCOL_TLS_SERVER, identity)
    ctx.set_alpn_protocols(list(MESH_SERVER_ALPN))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    # No session resumption: a resumed session skips verifying the client's certificate, so a
    # peer could return with a certificate that has since expired or whose root was retired.
    # Sidecars never resume (every connection is a full handshake) and pool their connections.
    ctx.options |= ssl.OP_NO_TICKET
    ctx.num_tickets = 0
    return ctx


def client_context(identity: WorkloadIdentity, *, h2: bool = False,
                   tcp: bool = False) -> ssl.SSLContext:
    """A client context presenting `identity` and verifying the server's chain (not its name);
    `h2`: for HTTP/2 connections (ALPN `h2` only); `tcp`: for TCP services (`ami-tcp`)."""
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, identity)
    if h2:
        ctx.set_alpn_protocols(list(H2_ALPN))
    elif tcp:
        ctx.set_alpn_protocols(list(TCP_ALPN))
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def verify_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket, expected: set[str] | None) -> str:
    """The peer's SPIFFE id, if it presented a cert and (unless `expected` is None) an allowed id.

    Raises IdentityError otherwise. Chain validity was already checked in the handshake.
    """
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise IdentityError("peer presented no certificate")
    spiffe_id = peer_spiffe_id(der)
    if expected is not None and spiffe_id not in expected:
        raise IdentityError(f"peer {spiffe_id} is not an expected identity")
    return spiffe_id


def verified_peer(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> tuple[str, bool]:
    """The peer's SPIFFE id and whether its certificate carries the gateway marker (an
    inbound connection's, read once); IdentityError as `verify_peer`."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise IdentityError("peer presented no certificate")
    return peer_identity(der)


@dataclass(frozen=True, slots=True)
class _Contexts:
    identity: WorkloadIdentity
    server: ssl.SSLContext
    client: ssl.SSLContext
    client_h2: ssl.SSLContext
    client_tcp: ssl.SSLContext


class TlsContexts:
    """The current server/client contexts, replaced together in one assignment on renewal.

    A connection keeps the context it was made with, so renewal drops nothing. A listener
    created once should use `listener`: a fixed context that hands each new handshake the
    current server context (via the SNI callback, which OpenSSL runs for every ClientHello).
    """

    def __init__(self, identity: WorkloadIdentity, *, require_client_cert: bool = True) -> None:
        """Build contexts for the first identity."""
        self._require_client_cert = require_client_cert
        self._current = self._build(identity)
        self.listener = server_context(identity, require_client_cert=require_client_cert)
        self.listener.sni_callback = self._swap_in_current

    @property
    def identity(self) -> WorkloadIdentity:
        """The identity the current contexts present."""
        return self._current.identity

    @property
    def server(self) -> ssl.SSLContext:
        """The current server context."""
        return self._current.server

    @property
    def client(self) -> ssl.SSLContext:
        """The current client context (read it per connection to pick up renewals)."""
        return self._current.client

    @property
    def client_h2(self) -> ssl.SSLContext:
        """The current client context for HTTP/2 connections."""
        return self._current.client_h2

    @property
    def client_tcp(self) -> ssl.SSLContext:
        """The current client context for TCP services' connections (ALPN `ami-tcp`)."""
        return self._current.client_tcp

    def update(self, identity: WorkloadIdentity) -> None:
        """Switch to a renewed identity (or trust bundle); on error the old contexts stay."""
        self._current = self._build(identity)

    def _build(self, identity: WorkloadIdentity) -> _Contexts:
        server = server_context(identity, require_client_cert=self._require_client_cert)
        return _Contexts(identity, server, client_context(identity),
                         client_context(identity, h2=True), client_context(identity, tcp=True))

    def _swap_in_current(
        self, ssl_object: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext
    ) -> None:
        ssl_object.context = self._current.server


def hardened_context(protocol: ssl._SSLMethod) -> ssl.SSLContext:
    """TLS 1.2 minimum, forward-secret AEAD suites only, no compression or renegotiation."""
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(list(ALPN))
    return ctx


def load_pem_pair(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """Load a certificate chain and its key held in memory (see the module docstring)."""
    with _private_file(chain_pem) as certfile, _private_file(key_pem) as keyfile:
        ctx.load_cert_chain(certfile, keyfile)


def _context(protocol: ssl._SSLMethod, identity: WorkloadIdentity) -> ssl.SSLContext:
    ctx = hardened_context(protocol)
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.load_verify_locations(cadata=identity.bundle_pem.decode("ascii"))
    load_pem_pair(ctx, identity.cert_pem + identity.chain_pem, identity.key_pem)
    return ctx


@contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path readable only by this process, holding `data` until the block ends."""
    if _USE_MEMFD:
        fd = os.memfd_create("ami-tls", os.MFD_CLOEXEC)
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="ami-tls-") as directory:  # mkdtemp: mode 0700
        path = os.path.join(directory, "material.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]

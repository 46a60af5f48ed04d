"""TLS client contexts for the control plane's calls to sidecars' admin listeners.

The control plane presents its own certificate (servercert.py: renewed in place; its SPIFFE id
is the only one a sidecar's admin listener takes privileged calls from over mTLS) and verifies
the sidecar's chain against the mesh's trusted roots, re-read when `trust-bundle.pem` changes
(a root added by `meshctl certs` counts without a restart). Host names are not checked: as
between sidecars (proxy/tls.py), a peer is who its one SPIFFE id says. Each context accepts one
id, the one of the service the sidecar registered as, checked as the handshake completes —
before a request, and the admin token with it, is sent.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from meshctl.ca import CertificateAuthority, spiffe_id_for
from meshctl.controlplane.ca_service import ServerCertificate
from meshctl.controlplane.servercert import RenewingServerCertificate
from proxy.identity import IdentityError, peer_spiffe_id
from proxy.tls import hardened_context, load_pem_pair


class AdminTls:
    """One client context per sidecar identity, rebuilt when the certificate or roots change."""

    def __init__(self, certificate: RenewingServerCertificate, ca: CertificateAuthority) -> None:
        self._certificate = certificate
        self._bundle_path: Path = ca.files.trust_bundle
        self.trust_domain = ca.trust_domain
        self._built_for: tuple[ServerCertificate, int] | None = None
        self._bundle = b""
        self._contexts: dict[str, ssl.SSLContext] = {}

    def spiffe_id(self, namespace: str, service: str) -> str:
        """The identity a sidecar of `namespace/service` must present (ValueError if those are
        not valid names)."""
        return spiffe_id_for(self.trust_domain, namespace, service)

    def context(self, spiffe_id: str) -> ssl.SSLContext:
        """A context presenting the control plane's current certificate that completes a
        handshake only with a mesh-signed peer whose SPIFFE id is `spiffe_id`."""
        self._certificate.renew_if_due()
        cert = self._certificate.current
        stamp = self._bundle_stamp()
        if self._built_for != (cert, stamp):
            self._contexts.clear()
            self._bundle = self._read_bundle(cert)
            self._built_for = (cert, stamp)
        ctx = self._contexts.get(spiffe_id)
        if ctx is None:
            ctx = self._contexts[spiffe_id] = self._build(cert, spiffe_id)
        return ctx

    def _build(self, cert: ServerCertificate, spiffe_id: str) -> ssl.SSLContext:
        ctx = hardened_context(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # the SPIFFE id is checked instead (see _expecting)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        ctx.load_verify_locations(cadata=self._bundle.decode("ascii"))
        load_pem_pair(ctx, cert.chain_pem, cert.key_pem)
        ctx.sslobject_class = _expecting(spiffe_id)
        return ctx

    def _bundle_stamp(self) -> int:
        try:
            return self._bundle_path.stat().st_mtime_ns
        except OSError:
            return 0

    def _read_bundle(self, cert: ServerCertificate) -> bytes:
        try:
            return self._bundle_path.read_bytes()
        except OSError:  # the CA directory moved away: the roots the certificate came with
            return cert.bundle_pem


def _expecting(spiffe_id: str) -> type[ssl.SSLObject]:
    """An SSLObject class whose handshake fails unless the peer's SPIFFE id is `spiffe_id`.

    asyncio (and uvloop) drive a TLS client through `SSLObject.do_handshake`; an error raised
    there fails the connection like an untrusted chain would, so nothing is sent to the peer.
    """

    class Expecting(ssl.SSLObject):
        def do_handshake(self) -> None:
            super().do_handshake()  # SSLWantReadError etc. until the handshake is complete
            der = self.getpeercert(binary_form=True)
            try:
                got = peer_spiffe_id(der) if der else "no certificate"
            except IdentityError as exc:
                got = str(exc)
            if got != spiffe_id:
                raise ssl.SSLCertVerificationError(
                    f"the admin listener is {got}, not {spiffe_id} (the service it registered as)")

    return Expecting

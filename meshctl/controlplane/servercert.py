"""The control plane's own TLS certificate (gRPC, and the API with --api-tls), renewed in place.

It is signed by the mesh CA for 30 days. A control plane runs longer than that, so the
certificate is issued again once half its lifetime has passed, as istiod renews its own. Both
servers look at it when a client connects: gRPC through dynamic server credentials (its fetcher
runs on a gRPC thread, hence the lock), the API through the SNI callback, which hands each new
handshake the current context. Open connections keep the certificate they started with.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterable

import grpc

from meshctl.ca import CertificateAuthority
from meshctl.controlplane.ca_service import ServerCertificate, control_plane_certificate
from proxy.tls import hardened_context, load_pem_pair

log = logging.getLogger("ami.controlplane.ca")
RENEW_AT = 0.5  # of the certificate's lifetime
RETRY_AFTER = 60.0  # seconds before trying again when issuing failed (CA key unreadable...)


class RenewingServerCertificate:
    """The current server certificate for ``hosts``; ``renew_if_due`` issues the next one."""

    def __init__(self, ca: CertificateAuthority | Callable[[], CertificateAuthority],
                 hosts: Iterable[str], *, clock: Callable[[], float] = time.time) -> None:
        """``ca``: the signer, or a function giving the current one (a rotated CA: the next
        handshake gets a certificate from the new intermediate, not after half a lifetime)."""
        self._ca_now = ca if callable(ca) else (lambda: ca)
        self._hosts, self._clock = list(hosts), clock
        self._lock = threading.Lock()
        self._signer = self._ca_now()
        self.current = control_plane_certificate(self._signer, self._hosts, clock=clock)
        self._renew_at = self._due(self.current)
        self.renewals = 0
        self._api: tuple[ServerCertificate, ssl.SSLContext] | None = None

    @staticmethod
    def _due(cert: ServerCertificate) -> float:
        return cert.issued_at + RENEW_AT * (cert.not_after - cert.issued_at)

    def renew_if_due(self) -> bool:
        """Issue a new certificate if half the current one's lifetime has passed, or the CA
        was rotated."""
        with self._lock:
            now = self._clock()
            signer = self._ca_now()
            if now < self._renew_at and signer is self._signer:
                return False
            try:
                self.current = control_plane_certificate(signer, self._hosts, clock=self._clock)
                self._signer = signer
            except Exception as exc:  # keep serving the old one; say why
                log.warning("control-plane certificate not renewed: %s; retrying in %.0fs",
                            exc, RETRY_AFTER)
                self._renew_at, self._signer = now + RETRY_AFTER, signer
                return False
            self._renew_at = self._due(self.current)
            self.renewals += 1
            log.info("control-plane certificate renewed (valid until %s)",
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.current.not_after)))
            return True

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """Server credentials that pick up each renewal for the next connections."""

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            if not self.renew_if_due():
                return None
            return _grpc_config(self.current)

        return grpc.dynamic_ssl_server_credentials(_grpc_config(self.current), fetch)

    def api_context(self) -> ssl.SSLContext:
        """The context the API listens with; each handshake is given the current certificate."""
        listener = self._api_context()
        listener.sni_callback = self._swap_in_current
        return listener

    def _api_context(self) -> ssl.SSLContext:
        cert = self.current
        if self._api is None or self._api[0] is not cert:
            ctx = hardened_context(ssl.PROTOCOL_TLS_SERVER)
            ctx.verify_mode = ssl.CERT_NONE  # API clients authenticate with the bearer token
            load_pem_pair(ctx, cert.chain_pem, cert.key_pem)
            self._api = (cert, ctx)
        return self._api[1]

    def _swap_in_current(self, ssl_object: ssl.SSLObject, _server_name: str | None,
                         _ctx: ssl.SSLContext) -> None:
        self.renew_if_due()
        ssl_object.context = self._api_context()


def _grpc_config(cert: ServerCertificate) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(cert.key_pem, cert.chain_pem)])

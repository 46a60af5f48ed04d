"""TLS origination: the sidecar opens TLS to a host outside the mesh for an app speaking HTTP.

As Istio's egress TLS origination (a DestinationRule `tls.mode: SIMPLE`, or `MUTUAL` with a
client certificate for hosts that want one): the app calls
`http://api.example.com/...` through its sidecar, the sidecar connects with TLS (the server's
certificate verified against the system roots or `caCertificates`, its name against `sni` or
the host), and so Routes, retries, timeouts and per-request metrics apply to what would
otherwise be an opaque HTTPS tunnel. For an `HTTP2`/`GRPC` port the app speaks h2c and the
sidecar offers ALPN `h2` alone (a server choosing anything else is a connect failure).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from meshctl.api.policy import ClientTLS

# What the sidecar offers outside hosts (as proxy.tls's ALPN and H2_ALPN; not imported from
# there, which loads cryptography: a sidecar without TLS origination or mTLS does without)
_HTTP1_ALPN = ("http/1.1",)
_H2_ALPN = ("h2",)

log = logging.getLogger("ami.proxy")


class OriginationError(ValueError):
    """The TLS settings cannot be used (a CA file missing or not PEM): the snapshot is refused."""


@dataclass(frozen=True, slots=True)
class Origination:
    """How a pool's connections are opened: this context, this server name (SNI, verified)."""

    context: ssl.SSLContext
    server_name: str
    files: str  # the CA file ("" for the system's roots) and the client certificate (MUTUAL)
    http2: bool = False  # ALPN `h2` (an HTTP2/GRPC port), else `http/1.1`

    @property
    def key(self) -> str:
        """What makes pools differ (part of their key): connections verified otherwise are
        not shared, and a changed setting gets new connections."""
        return f"*external-tls{'-h2' if self.http2 else ''}:{self.server_name}:{self.files}*"


def origination_for(host: str, tls: ClientTLS | None, http2: bool = False) -> Origination | None:
    """The Origination a host's `tls` asks for (``http2``: offering ALPN `h2`, for HTTP/2 to
    the host), or None for plaintext."""
    if tls is None or tls.mode == "DISABLE":
        return None
    try:
        context = ssl.create_default_context(cafile=tls.ca_certificates)
    except (OSError, ssl.SSLError) as exc:
        raise OriginationError(f"tls.caCertificates {tls.ca_certificates}: "
                               f"{getattr(exc, 'strerror', None) or exc}") from None
    if tls.mode == "MUTUAL" and tls.client_certificate and tls.private_key:
        try:
            context.load_cert_chain(tls.client_certificate, tls.private_key)
        except (OSError, ssl.SSLError) as exc:
            raise OriginationError(
                f"tls.clientCertificate {tls.client_certificate} and tls.privateKey "
                f"{tls.private_key}: {getattr(exc, 'strerror', None) or exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # What the sidecar speaks to the host: HTTP/1.1, or HTTP/2 alone (no fallback: a gRPC
    # call cannot be carried over HTTP/1.1)
    context.set_alpn_protocols(list(_H2_ALPN if http2 else _HTTP1_ALPN))
    return Origination(context, tls.sni or host,
                       f"{tls.ca_certificates or ''}:{tls.client_certificate or ''}", http2)


def check_h2(origination: Origination, address: object, ssl_object: ssl.SSLObject | None,
             ) -> None:
    """Raise OSError, logged, when the outside host did not choose ALPN `h2`."""
    chosen = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
    if chosen != "h2":
        log.warning("TLS to %s (endpoint %s): the server does not speak HTTP/2 (ALPN h2 "
                    "offered, %s chosen)", origination.server_name, address,
                    chosen or "none")
        raise OSError(f"outside host {address} does not speak HTTP/2 (ALPN)")


def log_ended(origination: Origination, address: object, exc: Exception | None) -> None:
    """An outside host ended a TLS session by an error, or under a request: said nowhere else.
    (A host wanting a client certificate ends a TLS 1.3 session only after the handshake:
    an alert, a close or a reset.)"""
    why = ("closed under a request" if exc is None else getattr(exc, "reason", None)
           or (exc.strerror if isinstance(exc, OSError) else None) or exc)
    log.warning("TLS to %s (endpoint %s) ended: %s", origination.server_name, address, why)

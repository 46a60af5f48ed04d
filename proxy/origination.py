"""TLS origination: the sidecar opens TLS to a host outside the mesh for an app speaking HTTP.

As Istio's egress TLS origination (a DestinationRule `tls.mode: SIMPLE`, or `MUTUAL` with a
client certificate for hosts that want one): the app calls
`http://api.example.com/...` through its sidecar, the sidecar connects with TLS (the server's
certificate verified against the system roots or `caCertificates`, its name against `sni` or
the host), and so Routes, retries, timeouts and per-request metrics apply to what would
otherwise be an opaque HTTPS tunnel.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

from meshctl.api.policy import ClientTLS
from proxy.tls import ALPN


class OriginationError(ValueError):
    """The TLS settings cannot be used (a CA file missing or not PEM): the snapshot is refused."""


@dataclass(frozen=True, slots=True)
class Origination:
    """How a pool's connections are opened: this context, this server name (SNI, verified)."""

    context: ssl.SSLContext
    server_name: str
    files: str  # the CA file ("" for the system's roots) and the client certificate (MUTUAL)

    @property
    def key(self) -> str:
        """What makes pools differ (part of their key): connections verified otherwise are
        not shared, and a changed setting gets new connections."""
        return f"*external-tls:{self.server_name}:{self.files}*"


def origination_for(host: str, tls: ClientTLS | None) -> Origination | None:
    """The Origination a host's `tls` asks for, or None for plaintext."""
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
    context.set_alpn_protocols(list(ALPN))  # HTTP/1.1: what the sidecar speaks to outside hosts
    return Origination(context, tls.sni or host,
                       f"{tls.ca_certificates or ''}:{tls.client_certificate or ''}")

"""The gateway marker: a certificate policy only trusted gateways' certificates carry."""

from __future__ import annotations

from cryptography import x509

# A private policy OID under the UUID arc (ITU-T X.667, 2.25.<UUID as an integer>): unique
# without a registration. A certificate policy (RFC 5280 4.2.1.4), non-critical, rather than a
# SAN or a private extension: it leaves the one SPIFFE URI SAN alone, every verifier ignores it
# (no policy checking is asked for), and `openssl x509 -text` shows it by name of extension.
GATEWAY_POLICY = x509.ObjectIdentifier("2.25.118482434509345388826773736908904816066")


def gateway_policy() -> x509.CertificatePolicies:
    """The extension the CA adds to a trusted gateway's certificate (critical=False)."""
    return x509.CertificatePolicies([x509.PolicyInformation(GATEWAY_POLICY, None)])


def is_gateway_certificate(cert: x509.Certificate) -> bool:
    """Whether `cert` carries the gateway marker (its chain is the caller's to have verified);
    a malformed extension carries none."""
    try:
        policies = cert.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    return any(p.policy_identifier == GATEWAY_POLICY for p in policies)

"""The `x-forwarded-client-cert` line an HTTPS gateway sends for a verified client certificate.

Envoy's format for one element: `Hash=<sha256 of the DER, hex>;Subject="<RFC 4514 DN>";URI=..;
DNS=..` (a URI or DNS pair per SAN). It is computed once per connection. The certificate
comes from an operator-trusted CA but its fields are the client's words: nothing in them may
end the header line or the element, so control and non-ASCII characters are escaped (`\\XX`
in the DN, as RFC 4514 allows; `%XX` in SANs), as are `"`, `,` and `;` in SANs.
"""

from __future__ import annotations

import hashlib

from cryptography import x509

_SAN_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - {'"', ",", ";", "%"}


def _dn_escaped(text: str) -> str:
    """An RFC 4514 string (its `"`, `\\`, `,`, `;` already escaped) with every character that
    is not printable ASCII as `\\XX` per UTF-8 byte."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(ch if ch.isascii() and ch.isprintable()
                   else "".join(f"\\{b:02X}" for b in ch.encode("utf-8")) for ch in text)


def _san_escaped(text: str) -> str:
    return "".join(ch if ch in _SAN_SAFE
                   else "".join(f"%{b:02X}" for b in ch.encode("utf-8")) for ch in text)


def xfcc_line(der: bytes) -> bytes:
    """The whole header line (CRLF included) for the client certificate `der`."""
    parts = [f"Hash={hashlib.sha256(der).hexdigest()}"]
    try:
        cert = x509.load_der_x509_certificate(der)
        parts.append(f'Subject="{_dn_escaped(cert.subject.rfc4514_string())}"')
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
    except ValueError:  # OpenSSL verified it; a field cryptography cannot read: Hash only
        san = None
    if san is not None:
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        parts += [f"URI={_san_escaped(v)}" for v in uris]
        parts += [f"DNS={_san_escaped(v)}" for v in san.get_values_for_type(x509.DNSName)]
    return b"x-forwarded-client-cert: " + ";".join(parts).encode("ascii") + b"\r\n"

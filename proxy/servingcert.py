"""An HTTPS certificate from PEM files the operator provides, reloaded when they change.

Used by the gateway (`--gateway-cert`, and `--gateway-client-ca` to ask clients for a
certificate: Istio's `tls.mode: MUTUAL`) and by the control plane's API (`--api-cert`). A
gateway may serve several pairs (ServingCertificates): each handshake gets the one whose
certificate names the server the client asked for, as Istio's Gateway servers with a
`credentialName` each.

Clients outside the mesh know the gateway by a DNS name, so its certificate comes from the
operator's CA (or cert-manager, or Let's Encrypt), not from the mesh CA, and its key stays on
the gateway's host. The files are checked every few seconds; a changed pair is loaded into a
new context that new handshakes get (through the SNI callback, as for workload certificates),
while open connections keep the one they started with. A pair that does not load (a key
written before its certificate, a typo) is logged and the last good one stays in service. The
client CA bundle is one more file of the set: it is reloaded the same way, and the swapped-in
context verifies client certificates with it (OpenSSL verifies against the context the SNI
callback picked; whether a certificate is asked for is the bound context's setting, fixed).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from datetime import datetime
from pathlib import Path

from cryptography import x509

from proxy.filewatch import Stamp, read_stamp
from proxy.tls import GATEWAY_ALPN, hardened_context

log = logging.getLogger("ami.proxy")
CHECK_EVERY = 5.0  # seconds between looks at the files' metadata


class CertificateError(Exception):
    """The certificate or key file cannot be read or does not make a usable pair."""


# The server name (SNI) a client asked for, kept on its connection's SSLObject by the SNI
# callback: a server-side SSLObject does not say it, and proxy.misdirected needs it.
_SERVER_NAME = "ami_server_name"


def served_name(ssl_object: ssl.SSLObject) -> str | None:
    """The server name the client sent in its ClientHello (None: it sent none); on a resumed
    TLS 1.2 session, the first handshake's (OpenSSL's): where that matters, the ClientHello
    read before the handshake says it (proxy.mtls)."""
    name: str | None = vars(ssl_object).get(_SERVER_NAME)
    return name


class ServingCertificate:
    """A server context for `cert_file` and `key_file`; `listener` is the one to bind with."""

    def __init__(self, cert_file: Path, key_file: Path, *,
                 alpn: tuple[str, ...] = GATEWAY_ALPN, name: str = "gateway certificate",
                 client_ca: Path | None = None, client_cert: str = "required") -> None:
        """Load the pair (and the client CA bundle, if any); raises CertificateError naming
        the file and the problem. `client_cert`: `required` refuses a handshake without a
        client certificate, `optional` takes one without (a presented one must verify)."""
        self.cert_file, self.key_file = cert_file, key_file
        self.alpn, self.name = alpn, name
        self.client_ca = client_ca
        self.verify_mode = (ssl.CERT_NONE if client_ca is None
                            else ssl.CERT_REQUIRED if client_cert == "required"
                            else ssl.CERT_OPTIONAL)
        self._stamp = self._read_stamp()
        self._current, self.not_after, self.names = self._load()
        # Bound once; OpenSSL runs the SNI callback on every ClientHello, with or without a
        # server name, and it hands the handshake the current context.
        self.listener = self._load()[0]
        self.listener.sni_callback = self._swap_in_current
        self.reloads = 0

    def _read_stamp(self) -> tuple[Stamp, ...]:
        files = (self.cert_file, self.key_file, *((self.client_ca,) if self.client_ca else ()))
        try:
            return tuple(read_stamp(path) for path in files)
        except OSError as exc:
            raise CertificateError(f"{exc.filename}: {exc.strerror}") from None

    def _new_context(self) -> ssl.SSLContext:
        ctx = hardened_context(ssl.PROTOCOL_TLS_SERVER)
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        # Clients of the gateway are not mesh workloads: a client certificate, if asked for,
        # is verified against the operator's CA bundle, never the mesh's.
        ctx.verify_mode = self.verify_mode
        if self.client_ca is not None:
            # No session resumption (as on mesh listeners): a resumed session skips verifying
            # the client's certificate, so a client could return after its CA was removed
            # from the bundle, or with a certificate that has since expired.
            ctx.options |= ssl.OP_NO_TICKET
            ctx.num_tickets = 0
        ctx.set_alpn_protocols(list(self.alpn))
        return ctx

    def _load(self) -> tuple[ssl.SSLContext, datetime, tuple[str, ...]]:
        ctx = self._new_context()
        try:
            ctx.load_cert_chain(self.cert_file, self.key_file)
            leaf = x509.load_pem_x509_certificate(self.cert_file.read_bytes())
        except (ssl.SSLError, ValueError) as exc:  # SSLError first: it is an OSError too
            raise CertificateError(f"{self.cert_file} and {self.key_file} do not load as a "
                                   f"PEM certificate chain and its key: {exc}") from None
        except OSError as exc:
            raise CertificateError(f"{exc.filename or self.cert_file}: {exc.strerror}") from None
        if self.client_ca is not None:
            self._load_client_ca(ctx, self.client_ca)
        return ctx, leaf.not_valid_after_utc, dns_names(leaf)

    @staticmethod
    def _load_client_ca(ctx: ssl.SSLContext, path: Path) -> None:
        try:
            data = path.read_text("ascii")
        except OSError as exc:
            raise CertificateError(f"{path}: {exc.strerror}") from None
        except ValueError:
            data = ""  # not ASCII: not PEM either
        if "-----BEGIN CERTIFICATE-----" not in data:
            # load_verify_locations takes an empty or certificate-less file without a word:
            # a truncated bundle would refuse every client with no reason given.
            raise CertificateError(f"{path}: no PEM certificate in the client CA bundle")
        try:
            ctx.load_verify_locations(cadata=data)
        except (ssl.SSLError, ValueError) as exc:
            raise CertificateError(f"{path} does not load as a PEM CA bundle: {exc}") from None

    def _swap_in_current(self, ssl_object: ssl.SSLObject, server_name: str | None,
                         _ctx: ssl.SSLContext) -> None:
        ssl_object.context = self._current
        vars(ssl_object)[_SERVER_NAME] = server_name  # (see served_name)

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed since the last look; True if swapped in."""
        try:
            stamp = self._read_stamp()
        except CertificateError as exc:
            log.warning("%s: %s; still serving the previous one", self.name, exc)
            return False
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # look at this version once, not on every check
        try:
            self._current, self.not_after, self.names = self._load()
        except CertificateError as exc:
            log.warning("%s not reloaded: %s; still serving the previous one (valid until %s)",
                        self.name, exc, self.not_after.isoformat())
            return False
        self.reloads += 1
        log.info("%s reloaded from %s (valid until %s)", self.name, self.cert_file,
                 self.not_after.isoformat())
        return True

    async def watch(self, interval: float = CHECK_EVERY) -> None:
        """Check the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()


def dns_names(cert: x509.Certificate) -> tuple[str, ...]:
    """The certificate's DNS names (subjectAltName), lower-case, without a final dot: what a
    client checks the server name against (RFC 6125 ignores the CN when SANs are present)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    return tuple(name.lower().rstrip(".") for name in san.get_values_for_type(x509.DNSName))


class ServingCertificates:
    """The gateway's pairs: a handshake gets the first pair whose certificate names the server
    the client asked for, an exact name before a wildcard (`*.example.com` covers one label,
    as clients check it); a client that names no server, or one no certificate names, gets
    the first pair. Each pair is reloaded on its own."""

    def __init__(self, pairs: list[ServingCertificate]) -> None:
        self.pairs = pairs
        self.default = pairs[0]
        self._by_name: dict[str, ServingCertificate] = {}
        self._index()
        # The first pair's context is bound; the callback hands each handshake its pair's
        # current context (OpenSSL runs it on every ClientHello, named or not).
        self.listener = self.default.listener
        self.listener.sni_callback = self._choose

    def _index(self) -> None:
        by_name: dict[str, ServingCertificate] = {}
        for pair in self.pairs:
            for name in pair.names:
                by_name.setdefault(name, pair)  # the first pair listed keeps a shared name
        self._by_name = by_name

    def pair_for(self, server_name: str | None) -> ServingCertificate:
        """The pair a client asking for `server_name` gets."""
        if not server_name:
            return self.default
        name = server_name.lower().rstrip(".")
        pair = self._by_name.get(name)
        if pair is None:
            _, dot, parent = name.partition(".")
            pair = self._by_name.get("*." + parent) if dot and parent else None
        return pair or self.default

    def _choose(self, ssl_object: ssl.SSLObject, server_name: str | None,
                _ctx: ssl.SSLContext) -> None:
        ssl_object.context = self.pair_for(server_name)._current
        vars(ssl_object)[_SERVER_NAME] = server_name  # (see served_name)

    @property
    def not_after(self) -> datetime:
        """When the first of the pairs expires."""
        return min(pair.not_after for pair in self.pairs)

    def reload_if_changed(self) -> bool:
        """Each pair's files looked at; True if any pair was swapped in."""
        swapped = [pair.reload_if_changed() for pair in self.pairs]
        if any(swapped):
            self._index()  # a renewed certificate may name other servers
        return any(swapped)

    async def watch(self, interval: float = CHECK_EVERY) -> None:
        """Check every pair's files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            self.reload_if_changed()

"""Sidecar side of certificate issuance: get a workload cert over gRPC, install it, renew it.

The key is generated here and never sent; only the CSR and the bootstrap token travel. Renewal
is scheduled at a random point in 50-70% of the *remaining* lifetime when the cert arrived (the
CA backdates not_before for clock skew, which must not pull renewal earlier). A failed attempt
is retried with full-jitter backoff; meanwhile the current certificate stays installed until
it expires, so a control-plane outage shorter than ~30% of the TTL goes unnoticed.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc import aio

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from proxy.identity import (
    RENEW_FROM,
    RENEW_TO,
    IdentityError,
    WorkloadIdentity,
    generate_key_and_csr,
)
from proxy.policy.backoff import Backoff

log = logging.getLogger("ami.proxy.identity")
Issuer = Callable[[mesh_pb2.CertificateRequest], Awaitable[mesh_pb2.CertificateResponse]]
Sleep = Callable[[float], Awaitable[None]]


class IdentitySink(Protocol):
    """What receives identities: `ProxyServer.set_identity`."""

    def set_identity(self, identity: Any) -> None: ...


@dataclass(frozen=True, slots=True)
class IdentityAgentConfig:
    """Who this sidecar is and how it renews (the window is injectable to keep tests short)."""

    service: str
    namespace: str = "default"
    token: str = ""
    proxy: str = ""  # this proxy's name (Register.name): the CA marks a registered gateway's
    trust_domain: str = "cluster.local"  # only for the CSR's SAN, which the CA ignores anyway
    renew_window: tuple[float, float] = (RENEW_FROM, RENEW_TO)
    retry_base: float = 0.5
    retry_max: float = 30.0


def grpc_issuer(target: str, ca_file: Path | None, timeout: float = 10.0) -> Issuer:
    """An Issuer calling IssueCertificate on `target`, over TLS verified with `ca_file`.

    Without `ca_file` the channel is plaintext (tests and DISABLE-only setups); a new channel
    per call keeps nothing half-broken across a control-plane restart.
    """
    roots = ca_file.read_bytes() if ca_file is not None else None

    async def issue(request: mesh_pb2.CertificateRequest) -> mesh_pb2.CertificateResponse:
        channel = (aio.secure_channel(target, _credentials(roots)) if roots is not None
                   else aio.insecure_channel(target))
        async with channel:
            stub = mesh_pb2_grpc.MeshControlStub(channel)  # type: ignore[no-untyped-call]
            response: mesh_pb2.CertificateResponse = await stub.IssueCertificate(
                request, timeout=timeout)
            return response

    return issue


def _credentials(roots: bytes) -> Any:
    import grpc

    return grpc.ssl_channel_credentials(root_certificates=roots)


def identity_from_response(key_pem: bytes, response: mesh_pb2.CertificateResponse,
                           config: IdentityAgentConfig) -> WorkloadIdentity:
    """Split the chain (leaf first) and check the CA gave the identity this sidecar is."""
    try:
        certs = x509.load_pem_x509_certificates(response.cert_chain_pem.encode())
    except ValueError as exc:
        raise IdentityError(f"unreadable certificate chain: {exc}") from None
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
    identity = WorkloadIdentity.from_pem(key_pem, pem[0], b"".join(pem[1:]),
                                         response.trust_bundle_pem.encode())
    suffix = f"/ns/{config.namespace}/sa/{config.service}"
    if not identity.spiffe_id.endswith(suffix):
        raise IdentityError(f"the control plane issued {identity.spiffe_id}, expected *{suffix}")
    return identity


class IdentityAgent:
    """Keeps `sink` supplied with a valid workload identity; see the module docstring."""

    def __init__(self, sink: IdentitySink, issuer: Issuer, config: IdentityAgentConfig, *,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 sleep: Sleep = asyncio.sleep,
                 first_after: Callable[[], Awaitable[None]] | None = None) -> None:
        """``first_after``: awaited before the first request (a gateway's registration)."""
        self.sink = sink
        self.first_after = first_after
        self.issuer = issuer
        self.config = config
        self.clock = clock
        self.rng = rng or random.Random()
        self.sleep = sleep
        self.backoff = Backoff(config.retry_base, config.retry_max, self.rng)
        self.identity: WorkloadIdentity | None = None
        self.renew_due: float | None = None
        self.renewals = 0  # successful issuances after the first
        self.failures = 0
        self.last_error = ""

    @property
    def cert_expiry(self) -> float | None:
        """not_after of the installed certificate (POSIX seconds), None before the first."""
        return self.identity.not_after if self.identity is not None else None

    def status(self) -> dict[str, Any]:
        """For readiness and proxy-status: identity, expiry, renewal state."""
        expiry = self.cert_expiry
        return {"spiffeId": self.identity.spiffe_id if self.identity else None,
                "certExpiry": rfc3339(expiry) if expiry is not None else "",
                "expired": expiry is not None and expiry <= self.clock(),
                "renewals": self.renewals, "failures": self.failures,
                "lastError": self.last_error}

    async def fetch_once(self) -> WorkloadIdentity:
        """One issuance: new key and CSR, call the issuer, install the result."""
        cfg = self.config
        spiffe_id = f"spiffe://{cfg.trust_domain}/ns/{cfg.namespace}/sa/{cfg.service}"
        key_pem, csr_pem = generate_key_and_csr(spiffe_id)
        request = mesh_pb2.CertificateRequest(csr_pem=csr_pem.decode("ascii"),
                                              service=cfg.service, namespace=cfg.namespace,
                                              token=cfg.token, proxy=cfg.proxy)
        response = await self.issuer(request)
        identity = identity_from_response(key_pem, response, cfg)
        received = self.clock()
        first = self.identity is None
        # Raises (old identity kept) if unusable. The sink reports the new certificate to the
        # control plane from inside this call, before the line below: it reads the identity it
        # installed (proxy.run.served_identity), never self.identity, still the old one here.
        self.sink.set_identity(identity)
        self.identity = identity
        low, high = cfg.renew_window
        self.renew_due = received + (identity.not_after - received) * self.rng.uniform(low, high)
        if not first:
            self.renewals += 1
        log.info("workload certificate %s installed, expires in %.0fs, renewing in %.0fs",
                 identity.spiffe_id, identity.not_after - received, self.renew_due - received)
        return identity

    async def obtain(self) -> WorkloadIdentity:
        """Fetch until it works, backing off between attempts (the first cert, or a renewal)."""
        attempt = 0
        while True:
            try:
                return await self.fetch_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # control plane down, refused, bad answer: all retried
                self.failures += 1
                self.last_error = str(exc) or repr(exc)
                delay = self.backoff.delay(attempt)
                attempt += 1
                log.warning("certificate request failed (%s); retrying in %.1fs%s",
                            _short(exc), delay, self._expiry_note())
                await self.sleep(delay)

    async def run(self) -> None:
        """Renew forever: obtain the first certificate if needed, then sleep until due, renew."""
        if self.identity is None:
            if self.first_after is not None:
                await self.first_after()
            await self.obtain()
        while True:
            assert self.renew_due is not None
            await self.sleep(max(0.0, self.renew_due - self.clock()))
            await self.obtain()

    def _expiry_note(self) -> str:
        if self.identity is None:
            return ""
        left = self.identity.not_after - self.clock()
        return (f"; current certificate expires in {left:.0f}s" if left > 0
                else "; current certificate HAS EXPIRED")


def rfc3339(ts: float) -> str:
    """POSIX seconds as RFC 3339 UTC (the format of Register/Status cert_expiry)."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _short(exc: BaseException) -> str:
    details = getattr(exc, "details", None)
    code = getattr(exc, "code", None)
    if callable(details) and callable(code):
        return f"{code().name}: {details()}"
    return str(exc) or type(exc).__name__

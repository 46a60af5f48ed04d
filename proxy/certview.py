"""The workload certificate as the sidecar serves it (never its key): for /config_dump."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from cryptography import x509


def certificate_view(identity: Any, agent: Any = None, now: float | None = None) -> dict[str, Any]:
    """The leaf (SPIFFE id, serial, issuer, validity, seconds left), the chain's length (leaf
    included) and the trust bundle's roots; with the identity agent, its renewal state.
    Parsed when asked (a dump, not a request): only public certificates are read."""
    now = time.time() if now is None else now
    leaf = x509.load_pem_x509_certificate(identity.cert_pem)
    chain = (x509.load_pem_x509_certificates(identity.chain_pem)
             if identity.chain_pem.strip() else [])
    view: dict[str, Any] = {
        "spiffeId": identity.spiffe_id,
        "serial": format(leaf.serial_number, "x"),
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "notBefore": _rfc3339(leaf.not_valid_before_utc.timestamp()),
        "notAfter": _rfc3339(identity.not_after),
        "secondsLeft": round(identity.not_after - now),
        "chainLength": 1 + len(chain),
        "roots": [{"subject": root.subject.rfc4514_string(),
                   "serial": format(root.serial_number, "x"),
                   "notAfter": _rfc3339(root.not_valid_after_utc.timestamp())}
                  for root in x509.load_pem_x509_certificates(identity.bundle_pem)],
    }
    if agent is not None:  # control-plane mode: issued over gRPC and renewed
        due = agent.renew_due
        view["renewal"] = {"dueSeconds": round(due - now) if due is not None else None,
                           "renewals": agent.renewals, "failures": agent.failures,
                           "lastError": agent.last_error or None}
    return view


def _rfc3339(ts: float) -> str:
    """As proxy.identity_agent.rfc3339 (not imported: it brings gRPC to static proxies)."""
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

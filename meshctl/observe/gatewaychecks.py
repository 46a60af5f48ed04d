"""``meshctl check``'s gateway trust lines: gateways whose x-forwarded-client-cert sidecars
drop (a service token, a certificate without the gateway marker), and proxies that share a
trusted gateway's identity."""

from __future__ import annotations

from typing import Any

from meshctl.observe.checks import Check


def gateway_trust_check(proxies: list[dict[str, Any]]) -> Check:
    """Gateways registered with a plain service token: they work, but sidecars remove the
    x-forwarded-client-cert they send (only a gateway token makes a gateway trusted).
    ``trustedGateway`` absent: a control plane from before gateway tokens, nothing to say.
    A proxy sharing a trusted gateway's identity is identity_sharing_check's."""
    trusted = _trusted_services(proxies)
    untrusted = [p for p in proxies if p.get("mode") == "gateway"
                 and p.get("trustedGateway") is False and _service_of(p) not in trusted]
    if not untrusted:
        return Check("gateways trusted", "ok")
    detail = ", ".join(f"{p['name']} ({'/'.join(_service_of(p))})" for p in untrusted)
    fixes = "; ".join(sorted({
        f"meshctl certs token --gateway --service {p['service']} --namespace "
        f"{_service_of(p)[0]}" for p in untrusted}))
    return Check("gateways trusted", "warn", f"registered with a service token, so sidecars "
                 f"drop the x-forwarded-client-cert they send: {detail}",
                 f"give each its gateway token ({fixes} > FILE) as --token-file and restart it")


def gateway_certificate_check(proxies: list[dict[str, Any]]) -> Check:
    """Trusted gateways whose certificate has no gateway marker: sidecars keep a trusted
    gateway's XFCC only from a marked certificate, and the CA marks only that of a gateway
    that names itself when it asks (a proxy from before the marker does not). Not yet a
    certificate, or ``gatewayCertificate`` absent (an older control plane): nothing to say."""
    unmarked = [p for p in proxies if p.get("mode") == "gateway" and p.get("trustedGateway")
                and p.get("certExpiry") and p.get("gatewayCertificate") is False]
    if not unmarked:
        return Check("gateway certificates marked", "ok")
    detail = ", ".join(f"{p['name']} ({'/'.join(_service_of(p))}, proxy "
                       f"{p.get('proxyVersion') or 'unknown'})" for p in unmarked)
    return Check("gateway certificates marked", "warn",
                 f"registered with their gateway token, but their certificate has no gateway "
                 f"marker, so sidecars drop the x-forwarded-client-cert they send: {detail}",
                 "upgrade each to a proxy of this control plane's version and restart it (with "
                 "the same gateway token): it asks for its certificate by name once registered, "
                 "and the CA marks it")


def identity_sharing_check(proxies: list[dict[str, Any]]) -> Check:
    """Any other proxy of a trusted gateway's service (a sidecar, a gateway with the service
    token) has its SPIFFE id, which is per service. Sidecars no longer keep its XFCC (its
    certificate has no gateway marker), but sidecars from before the marker do, and
    AuthorizationPolicy rules naming the gateway's identity or service admit it."""
    trusted = _trusted_services(proxies)
    sharing = [p for p in proxies if _service_of(p) in trusted
               and not (p.get("mode") == "gateway" and p.get("trustedGateway"))]
    if not sharing:
        return Check("gateway identities not shared", "ok")
    detail = ", ".join(f"{p['name']} ({p.get('mode') or 'sidecar'}, {'/'.join(_service_of(p))})"
                       for p in sharing)
    return Check("gateway identities not shared", "warn",
                 f"share a trusted gateway's identity: sidecars drop their "
                 f"x-forwarded-client-cert (no gateway marker), but sidecars from before the "
                 f"marker keep it, and policies allowing the gateway allow them: {detail}",
                 "run gateways under a service of their own, give its gateways their gateway "
                 "token and hand its service token to nothing else")


def _service_of(proxy: dict[str, Any]) -> tuple[str, str]:
    return str(proxy.get("namespace") or "default"), str(proxy.get("service"))


def _trusted_services(proxies: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {_service_of(p) for p in proxies
            if p.get("mode") == "gateway" and p.get("trustedGateway")}

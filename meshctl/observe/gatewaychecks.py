"""``meshctl check``'s gateway trust lines: gateways whose x-forwarded-client-cert sidecars
drop (a service token), and proxies that share a trusted gateway's identity."""

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


def identity_sharing_check(proxies: list[dict[str, Any]]) -> Check:
    """Sidecars keep XFCC by the peer's SPIFFE id, which is per service: any other proxy of
    a trusted gateway's service (a sidecar, a gateway with the service token) has that id, so
    its XFCC is kept too, and whoever holds that service's plain token can mint the id."""
    trusted = _trusted_services(proxies)
    sharing = [p for p in proxies if _service_of(p) in trusted
               and not (p.get("mode") == "gateway" and p.get("trustedGateway"))]
    if not sharing:
        return Check("gateway identities not shared", "ok")
    detail = ", ".join(f"{p['name']} ({p.get('mode') or 'sidecar'}, {'/'.join(_service_of(p))})"
                       for p in sharing)
    return Check("gateway identities not shared", "warn",
                 f"share a trusted gateway's identity, so sidecars keep their "
                 f"x-forwarded-client-cert too: {detail}",
                 "run gateways under a service of their own, give its gateways their gateway "
                 "token and hand its service token to nothing else")


def _service_of(proxy: dict[str, Any]) -> tuple[str, str]:
    return str(proxy.get("namespace") or "default"), str(proxy.get("service"))


def _trusted_services(proxies: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {_service_of(p) for p in proxies
            if p.get("mode") == "gateway" and p.get("trustedGateway")}

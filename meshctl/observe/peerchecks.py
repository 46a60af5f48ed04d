"""``meshctl check``'s mTLS group: each PeerAuthentication, warning of those that relax mTLS
(PERMISSIVE, DISABLE) with the registered services they leave without it, as ``istioctl
analyze`` and ``linkerd check`` point at workloads accepting plaintext."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshctl.api.kinds import MeshConfigSpec
from meshctl.api.peerauthn import MtlsModes, PeerAuthenticationSpec
from meshctl.observe.checks import Check, Group

_HINTS = {
    "PERMISSIVE": "these sidecars also take plaintext, whose callers have no identity (an "
                  "AuthorizationPolicy `from` never matches them): once their clients are all in "
                  "the mesh, set STRICT or delete the PeerAuthentication",
    "DISABLE": "callers send these services plaintext, unencrypted and without identity: keep "
               "it only for an app that terminates its own TLS",
}


def peer_authentication_checks(peer_auths: Sequence[Any], meshes: Sequence[Any],
                               proxies: list[dict[str, Any]]) -> list[Group]:
    """One check per PeerAuthentication (``peer_auths`` and ``meshes``: Resources); no group
    when there is none. A relaxing one warns, naming the services (of the registered
    sidecars) whose mode it decides, i.e. that no more specific PeerAuthentication
    overrides."""
    if not peer_auths:
        return []
    mesh = next((m.spec for m in meshes if isinstance(m.spec, MeshConfigSpec)), MeshConfigSpec())
    declared = sorted((r for r in peer_auths if isinstance(r.spec, PeerAuthenticationSpec)),
                      key=lambda r: (r.namespace, r.name))
    modes = MtlsModes(mesh.mtls_mode, [(r.namespace, r.spec) for r in declared])
    services = sorted({(str(p.get("namespace") or "default"), str(p["service"]))
                       for p in proxies if p.get("mode", "sidecar") == "sidecar"
                       and p.get("service")})
    checks = []
    for r in declared:
        name = f"PeerAuthentication {r.namespace}/{r.name}"
        mode = r.spec.mode
        if mode not in _HINTS:
            checks.append(Check(name, "ok", mode))
            continue
        level = (r.namespace, r.spec.service)
        decided = [svc for ns, svc in services if modes.decided_by(ns, svc) == level]
        running = ", ".join(decided) if decided else "no registered service"
        checks.append(Check(name, "warn", f"{mode}, mTLS not enforced for: {running}",
                            _HINTS[mode]))
    return [Group("mTLS (PeerAuthentication)", tuple(checks))]

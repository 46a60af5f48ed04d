"""``meshctl check``'s mTLS group: each PeerAuthentication, warning of those that relax mTLS
(PERMISSIVE, DISABLE, for the workload or a port) with the registered sidecars they leave
without it, and of portLevelMtls ports no selected sidecar serves, as ``istioctl analyze`` and
``linkerd check`` do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from meshctl.api.kinds import MeshConfigSpec
from meshctl.api.peerauthn import MtlsModes, PeerAuthenticationSpec, selects
from meshctl.api.workloads import workload_labels
from meshctl.observe.checks import Check, Group

_HINTS = {
    "PERMISSIVE": "these sidecars also take plaintext, whose callers have no identity (an "
                  "AuthorizationPolicy `from` never matches them): once their clients are all in "
                  "the mesh, set STRICT or delete the PeerAuthentication",
    "DISABLE": "callers send these services plaintext, unencrypted and without identity: keep "
               "it only for an app that terminates its own TLS",
}
_PORT_HINT = ("portLevelMtls names the port of the workload's app (a sidecar's --app port, "
              "`appPort` in meshctl proxy-status -o json), not its inbound listener's")

Workload = tuple[str, str, str, dict[str, str], int]  # namespace, service, version, labels, port


def peer_authentication_checks(peer_auths: Sequence[Any], meshes: Sequence[Any],
                               proxies: list[dict[str, Any]]) -> list[Group]:
    """One check per PeerAuthentication (``peer_auths`` and ``meshes``: Resources); no group
    when there is none. A relaxing one warns, naming the services (of the registered
    sidecars) whose mode it decides, i.e. that no more specific PeerAuthentication
    overrides; a sidecar rather than its whole service (`reviews v3`) where it decides for
    some of a service's sidecars only."""
    if not peer_auths:
        return []
    mesh = next((m.spec for m in meshes if isinstance(m.spec, MeshConfigSpec)), MeshConfigSpec())
    declared = sorted((r for r in peer_auths if isinstance(r.spec, PeerAuthenticationSpec)),
                      key=lambda r: (r.namespace, r.name))
    modes = MtlsModes(mesh.mtls_mode, [(r.namespace, r.spec) for r in declared])
    workloads = _workloads(proxies)
    checks = tuple(_check(r, modes, workloads) for r in declared)
    return [Group("mTLS (PeerAuthentication)", checks)]


def _workloads(proxies: list[dict[str, Any]]) -> list[Workload]:
    """The registered sidecars (proxy-status JSON), in order."""
    workloads: list[Workload] = [
        (str(p.get("namespace") or "default"), str(p["service"]), str(p.get("version") or ""),
         dict(p.get("labels") or {}), int(p.get("appPort") or 0))
        for p in proxies if p.get("mode", "sidecar") == "sidecar" and p.get("service")]
    workloads.sort(key=lambda w: (w[0], w[1], w[2], w[4]))  # (labels do not compare)
    return workloads


def _served(r: Any, workloads: list[Workload]) -> list[int]:
    """The app ports of the registered sidecars ``r``'s selector selects."""
    spec: PeerAuthenticationSpec = r.spec
    selector = spec.selector
    if selector is None:
        return []
    return sorted({w[4] for w in workloads if w[4] and w[0] == r.namespace
                   and selects(selector, workload_labels(w[1], w[3]))})


def _unserved_ports(r: Any, workloads: list[Workload]) -> list[str]:
    """Each portLevelMtls port of ``r`` that no sidecar its selector selects serves (its app's
    port), said as a reason: a port it will never apply to, as ``istioctl analyze`` warns."""
    spec: PeerAuthenticationSpec = r.spec
    if not spec.ports or spec.selector is None:
        return []
    served = _served(r, workloads)
    return [f"portLevelMtls port {port}: no selected sidecar serves it (their app ports: "
            f"{', '.join(map(str, served)) or 'none'})"
            for port, _ in spec.ports if port not in served]


def port_warnings(peer_auths: Sequence[Any], proxies: list[dict[str, Any]]) -> list[str]:
    """``meshctl apply``'s warnings: applied PeerAuthentications' portLevelMtls ports that no
    registered sidecar they select serves."""
    workloads = _workloads(proxies)
    return [f"PeerAuthentication {r.namespace}/{r.name}: {reason}" for r in peer_auths
            if isinstance(r.spec, PeerAuthenticationSpec)
            for reason in _unserved_ports(r, workloads)]


def _check(r: Any, modes: MtlsModes, workloads: list[Workload]) -> Check:
    spec: PeerAuthenticationSpec = r.spec
    name = f"PeerAuthentication {r.namespace}/{r.name}"
    level = (r.namespace, spec.selector_text)
    # a port no selected sidecar serves relaxes nothing: it is warned of below, as unserved
    served = _served(r, workloads) if spec.selector is not None else []
    relaxing = [m for m in (spec.mode, *(m for port, m in spec.ports if port in served))
                if m in _HINTS]
    detail, hints = spec.mode, list[str]()
    if relaxing:
        decided = [w for w in workloads
                   if modes.decided_by(w[0], w[1], labels=w[3], port=w[4]) == level
                   and modes.mode(w[0], w[1], labels=w[3], port=w[4]) in _HINTS]
        detail += f", mTLS not enforced for: {_names(decided, workloads)}"
        hints.extend(dict.fromkeys(_HINTS[m] for m in relaxing))
    for reason in _unserved_ports(r, workloads):
        detail += f"; {reason}"
        hints.append(_PORT_HINT)
    if not hints:
        return Check(name, "ok", detail)
    return Check(name, "warn", detail, "; ".join(dict.fromkeys(hints)))


def _names(decided: list[Workload], workloads: list[Workload]) -> str:
    """`service` where every registered sidecar of it is in ``decided``, else `service
    version` for each one that is."""
    names: list[str] = []
    for ns, service, version, _, _ in decided:
        every = all(w in decided for w in workloads if w[:2] == (ns, service))
        names.append(service if every else f"{service} {version}")
    return ", ".join(dict.fromkeys(names)) or "no registered service"

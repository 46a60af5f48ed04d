"""PeerAuthentication: the mTLS mode a namespace's or one service's sidecars accept (Istio's).

The effective mode of a service is that of the PeerAuthentication selecting it, else of its
namespace's namespace-wide one, else MeshConfig's ``mtls.mode``; ``UNSET`` at a level defers to
the next. Callers follow it (auto mTLS): plaintext to a ``DISABLE`` service, mTLS otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.fields import Fields

PEER_MODES = ("STRICT", "PERMISSIVE", "DISABLE", "UNSET")
UNSET = "UNSET"



@dataclass(frozen=True, slots=True)
class PeerAuthenticationSpec:
    """spec of a PeerAuthentication: ``service`` None = every sidecar of its namespace."""

    service: str | None
    mode: str = UNSET


def parse_peer_authentication(data: object, path: str) -> PeerAuthenticationSpec:
    """Parse PeerAuthentication.spec."""
    f = Fields(data, path)
    service = f.optional("selector", F.service_selector)
    mode = f.value("mtls", _parse_mtls, UNSET)
    f.finish()
    return PeerAuthenticationSpec(service, mode)


def _parse_mtls(data: object, path: str) -> str:
    f = Fields(data, path)
    mode = f.value("mode", F.enum(PEER_MODES), UNSET)
    f.finish()
    return mode


Level = tuple[str, str | None]  # (namespace, service), service None: the namespace-wide one


class MtlsModes:
    """The effective mTLS mode of each service, from the mesh's mode and the
    PeerAuthentications given as (namespace, spec) pairs (at most one per level)."""

    def __init__(self, mesh_mode: str,
                 declared: Iterable[tuple[str, PeerAuthenticationSpec]] = ()) -> None:
        self.mesh_mode = mesh_mode
        self._levels: dict[Level, str] = {(ns, spec.service): spec.mode for ns, spec in declared
                                          if spec.mode != UNSET}

    def __bool__(self) -> bool:
        """Whether any PeerAuthentication sets a mode (else every service has the mesh's)."""
        return bool(self._levels)

    def decided_by(self, namespace: str, service: str,
                   namespace_wide: bool = True) -> Level | None:
        """The level whose mode applies to ``service``: its own, its namespace's (unless not
        ``namespace_wide``: a gateway, which only policies naming it apply to), or None (the
        mesh's)."""
        levels = ((namespace, service), (namespace, None)) if namespace_wide \
            else ((namespace, service),)
        return next((level for level in levels if level in self._levels), None)

    def mode(self, namespace: str, service: str, namespace_wide: bool = True) -> str:
        """STRICT, PERMISSIVE or DISABLE: what the service's sidecars accept."""
        level = self.decided_by(namespace, service, namespace_wide)
        return self._levels[level] if level is not None else self.mesh_mode

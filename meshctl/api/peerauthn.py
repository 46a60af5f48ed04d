"""PeerAuthentication: the mTLS mode a namespace's or some workloads' sidecars accept (Istio's).

The effective mode of a workload (a sidecar: its service as label ``app``, its registered
labels, its app's port) is that of the PeerAuthentication whose selector matches it (its
``portLevelMtls`` entry for the app's port first), else of its namespace's namespace-wide one,
else MeshConfig's ``mtls.mode``; ``UNSET`` at a level defers to the next. Callers follow it
(auto mTLS): plaintext to a ``DISABLE`` workload, mTLS otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.errors import Issue, ValidationError, fail
from meshctl.api.fields import Fields
from meshctl.api.workloads import workload_labels

PEER_MODES = ("STRICT", "PERMISSIVE", "DISABLE", "UNSET")
UNSET = "UNSET"


@dataclass(frozen=True, slots=True)
class PeerAuthenticationSpec:
    """spec of a PeerAuthentication. ``service``: the selector's service (``selector.service``
    or ``matchLabels.app``); ``match_labels``: Istio's ``selector.matchLabels`` as sorted
    pairs (None when not written); neither: every sidecar of its namespace. ``ports``:
    ``portLevelMtls`` as sorted (port, mode) pairs."""

    service: str | None
    mode: str = UNSET
    match_labels: tuple[tuple[str, str], ...] | None = None
    ports: tuple[tuple[int, str], ...] = ()

    @property
    def selector(self) -> dict[str, str] | None:
        """The workload labels it selects (the service is label ``app``); None: the
        namespace's every sidecar."""
        if self.match_labels is not None:
            return dict(self.match_labels)
        return None if self.service is None else {"app": self.service}

    @property
    def selector_text(self) -> str | None:
        """How messages name its selector: the service alone as its name, else `k=v,...`."""
        selector = self.selector
        if selector is None:
            return None
        if set(selector) == {"app"}:
            return selector["app"]
        return ",".join(f"{k}={v}" for k, v in sorted(selector.items()))


def parse_peer_authentication(data: object, path: str) -> PeerAuthenticationSpec:
    """Parse PeerAuthentication.spec."""
    f = Fields(data, path)
    selector = f.optional("selector", _parse_selector)
    mode = f.value("mtls", _parse_mtls, UNSET)
    ports = f.optional("portLevelMtls", _parse_port_level)
    service, match_labels = selector if selector is not None else (None, None)
    # (a selector with a mistake of its own is reported as that, not as missing)
    if ports is not None and (not f.has("selector") or selector == (None, None)):
        # Istio's validation: port numbers mean something only for the selected workloads
        f.add(f.at("portLevelMtls"), "needs a selector (selector.matchLabels or "
                                     "selector.service): a namespace-wide PeerAuthentication "
                                     "cannot set port-level mTLS")
    f.finish()
    return PeerAuthenticationSpec(service, mode, match_labels, ports or ())


def _parse_selector(data: object, path: str) -> tuple[str | None, tuple[tuple[str, str], ...]
                                                       | None]:
    """`{service: NAME}` (Ami's) or `{matchLabels: {...}}` (Istio's), not both. An empty
    matchLabels selects the whole namespace, as in Istio."""
    f = Fields(data, path)
    if f.has("service") and f.has("matchLabels"):
        f.add(f.at("matchLabels"), "selector.service and selector.matchLabels are two forms "
                                   "of one selector: give one ({app: NAME} is service: NAME)")
    service = f.optional("service", F.string(F.DNS_LABEL, "a DNS-1123 label"))
    labels = f.optional("matchLabels", F.labels)
    if not f.has("service") and not f.has("matchLabels"):
        f.add(f.at("service"), "field is required (or matchLabels, Istio's form)")
    if labels is not None and "app" in labels:  # the service name: a DNS-1123 label
        _check_app(f, labels["app"], F.join(f.at("matchLabels"), "app"))
    f.finish()
    if labels is not None:
        if not labels:
            return None, None
        return labels.get("app"), tuple(sorted(labels.items()))
    return service, None


def _check_app(f: Fields, value: str, path: str) -> None:
    """Record (on ``f``) why a matchLabels `app` cannot be a service name, if it cannot."""
    try:
        F.string(F.DNS_LABEL, "a service name (a DNS-1123 label)")(value, path)
    except ValidationError as err:
        f.issues.extend(err.issues)


def _parse_mtls(data: object, path: str) -> str:
    f = Fields(data, path)
    mode = f.value("mode", F.enum(PEER_MODES), UNSET)
    f.finish()
    return mode


def _parse_port_level(data: object, path: str) -> tuple[tuple[int, str], ...]:
    """`{PORT: {mode: ...}}`: YAML gives int keys, JSON digit strings; at least one entry."""
    if not isinstance(data, Mapping):
        fail(path, f"expected a mapping of port numbers, got {F.describe(data)}")
    if not data:
        fail(path, "must have at least one port (or leave portLevelMtls out)")
    ports: dict[int, str] = {}
    issues: list[Issue] = []
    for key, value in data.items():
        where = F.join(path, str(key))
        number = key if isinstance(key, int) and not isinstance(key, bool) else \
            int(key) if isinstance(key, str) and key.isdigit() else None
        if number is None or not 0 < number < 65536:
            issues.append(Issue(None, None, where, f"expected a port number 1-65535, got "
                                                   f"{key!r}"))
            continue
        if number in ports:
            issues.append(Issue(None, None, where, f"port {number} is given twice"))
            continue
        try:
            ports[number] = _parse_mtls(value, where)
        except ValidationError as err:
            issues.extend(err.issues)
    if issues:
        raise ValidationError(issues)
    return tuple(sorted(ports.items()))


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Whether a workload with ``labels`` (``app`` included) carries every selector label."""
    return all(labels.get(k) == v for k, v in selector.items())


def overlap(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Whether one workload could carry both selectors' labels (no key differs)."""
    return all(b.get(k, v) == v for k, v in a.items())


Level = tuple[str, str | None]  # (namespace, selector_text), None: the namespace-wide one


class MtlsModes:
    """The effective mTLS mode of each workload, from the mesh's mode and the
    PeerAuthentications given as (namespace, spec) pairs (at most one namespace-wide per
    namespace; selectors that could match one workload are refused by validation, and
    should the store still hold two, the first given wins)."""

    def __init__(self, mesh_mode: str,
                 declared: Iterable[tuple[str, PeerAuthenticationSpec]] = ()) -> None:
        self.mesh_mode = mesh_mode
        self._namespace: dict[str, str] = {}
        self._selectors: dict[str, list[PeerAuthenticationSpec]] = {}
        for ns, spec in declared:
            if spec.selector is None:
                if spec.mode != UNSET:
                    self._namespace.setdefault(ns, spec.mode)
            elif spec.mode != UNSET or any(m != UNSET for _, m in spec.ports):
                self._selectors.setdefault(ns, []).append(spec)
        # Whether any selector sets more than its service's mode (other labels, ports): only
        # then can two workloads of one service differ.
        self.per_workload = any(set(spec.selector or ()) != {"app"} or spec.ports
                                for specs in self._selectors.values() for spec in specs)

    def __bool__(self) -> bool:
        """Whether any PeerAuthentication sets a mode (else every service has the mesh's)."""
        return bool(self._namespace or self._selectors)

    def _decide(self, namespace: str, service: str, namespace_wide: bool,
                labels: Mapping[str, str] | None, port: int) -> tuple[Level, str] | None:
        own = workload_labels(service, labels or {})
        for spec in self._selectors.get(namespace, ()):
            selector = spec.selector
            assert selector is not None
            if selects(selector, own):
                by_port = dict(spec.ports).get(port, UNSET) if port else UNSET
                mode = by_port if by_port != UNSET else spec.mode
                if mode != UNSET:
                    return (namespace, spec.selector_text), mode
                break  # UNSET on every level it has: the namespace's
        if namespace_wide and namespace in self._namespace:
            return (namespace, None), self._namespace[namespace]
        return None

    def decided_by(self, namespace: str, service: str, namespace_wide: bool = True,
                   labels: Mapping[str, str] | None = None, port: int = 0) -> Level | None:
        """The level whose mode applies to a workload of ``service`` (with ``labels`` and its
        app on ``port``, when known): a selector's, its namespace's (unless not
        ``namespace_wide``: a gateway, which only selectors apply to), or None (the mesh's)."""
        found = self._decide(namespace, service, namespace_wide, labels, port)
        return found[0] if found is not None else None

    def mode(self, namespace: str, service: str, namespace_wide: bool = True,
             labels: Mapping[str, str] | None = None, port: int = 0) -> str:
        """STRICT, PERMISSIVE or DISABLE: what the workload's sidecar accepts."""
        found = self._decide(namespace, service, namespace_wide, labels, port)
        return found[1] if found is not None else self.mesh_mode

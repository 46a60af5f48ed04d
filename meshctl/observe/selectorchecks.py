"""``meshctl check`` and ``apply`` warnings: two Sidecars or Telemetries selecting one sidecar.

Validation refuses two of a kind with the same selector in a namespace, not two whose
different selectors (``app=web`` and ``version=v2``) match the same registered sidecar. The
control plane then resolves them by name, silently: the first by name is the sidecar's Sidecar
(the other's egress hosts and outboundTrafficPolicy are not used for it), and the first by name
decides each Telemetry field it sets (the other's same fields are not used). Istio's analyzer
warns of the same (IST0110 ConflictingSidecarWorkloadSelectors, IST0159
ConflictingTelemetryWorkloadSelectors), where which one applies is undefined.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from meshctl.api.sidecar import SidecarSpec
from meshctl.api.telemetry import TelemetrySpec
from meshctl.api.telemetry import selects as telemetry_selects
from meshctl.observe.checks import Check, Group

# (winner, other, the registered proxies both select where the winner applies)
Conflict = tuple[Any, Any, list[str]]
_HINT = ("give them selectors that differ in a label's value (e.g. version=v1 and version=v2), "
         "or merge them into one")


def _conflicts(items: Iterable[Any], proxies: list[dict[str, Any]],
               selects: Callable[[Any, str, Mapping[str, str]], bool],
               sidecars_only: bool) -> list[Conflict]:
    """For each registered proxy selected by more than one of ``items`` (workload-level
    objects of one kind): the first by name and each other one, as the control plane orders
    them (controlplane/scoping.py, api/telemetry.py ``effective``)."""
    ordered = sorted(items, key=lambda r: (r.namespace, r.name))
    found: dict[tuple[str, str, str], Conflict] = {}  # by (namespace, winner, other)
    for p in proxies:
        if sidecars_only and p.get("mode", "sidecar") != "sidecar":
            continue  # a gateway is never scoped by a Sidecar
        service, namespace = str(p.get("service")), str(p.get("namespace") or "default")
        labels = p.get("labels") or {}
        picked = [r for r in ordered if r.namespace == namespace
                  and selects(r.spec, service, labels)]
        for other in picked[1:]:
            first = picked[0]
            found.setdefault((namespace, first.name, other.name),
                             (first, other, []))[2].append(str(p.get("name")))
    return list(found.values())


def _sidecar_selects(spec: SidecarSpec, service: str, labels: Mapping[str, str]) -> bool:
    return spec.labels is not None and spec.selects(service, labels)


def _sidecar_selector(spec: SidecarSpec) -> str:
    return ",".join(f"{k}={v}" for k, v in spec.labels or ())


def _telemetry_selector(spec: TelemetrySpec) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((spec.match_labels or {}).items()))


def _telemetry_fields(spec: TelemetrySpec) -> list[str]:
    """The fields a Telemetry sets, each decided on its own (api/telemetry.py ``effective``)."""
    out = ["accessLogging"] if spec.access_logging is not None else []
    if spec.tracing is not None and spec.tracing.sampling_percentage is not None:
        out.append("tracing.randomSamplingPercentage")
    if spec.tracing is not None and spec.tracing.disable_span_reporting is not None:
        out.append("tracing.disableSpanReporting")
    return out


def _name(first: Any, other: Any) -> str:
    return f"{first.kind} {first.namespace}/{first.name} and {other.namespace}/{other.name}"


def _both(first: Any, other: Any, names: list[str], selector: Callable[[Any], str]) -> str:
    return (f"both select {', '.join(sorted(names))} ({selector(first.spec)} and "
            f"{selector(other.spec)})")


def _sidecar_text(first: Any, other: Any, names: list[str]) -> str:
    return (_both(first, other, names, _sidecar_selector)
            + f": {first.name} applies (the first by name); {other.name}'s egress hosts and "
            "outboundTrafficPolicy are not used for them")


def _telemetry_text(first: Any, other: Any, names: list[str]) -> str:
    mine = _telemetry_fields(first.spec)
    unused = [f for f in _telemetry_fields(other.spec) if f in mine]
    verb = "is" if len(unused) == 1 else "are"
    outcome = (f"{other.name}'s {', '.join(unused)} {verb} not used for them" if unused else
               f"they set different fields, so {other.name}'s apply too")
    return (_both(first, other, names, _telemetry_selector)
            + f": {first.name} applies first (by name), {outcome}")


def sidecar_conflicts(sidecars: Iterable[Any], proxies: list[dict[str, Any]]) -> list[Check]:
    """One warning per pair of Sidecars whose selectors both match registered sidecars."""
    items = [s for s in sidecars if isinstance(s.spec, SidecarSpec) and s.spec.labels]
    return [Check(_name(first, other), "warn", _sidecar_text(first, other, names), _HINT)
            for first, other, names in _conflicts(items, proxies, _sidecar_selects,
                                                    True)]


def telemetry_checks(telemetries: Iterable[Any], proxies: list[dict[str, Any]]) -> list[Group]:
    """``meshctl check``'s Telemetry group: one warning per pair of Telemetries whose
    selectors both match registered sidecars; no group when there is none."""
    items = [t for t in telemetries if isinstance(t.spec, TelemetrySpec)
             and t.spec.match_labels is not None]
    checks = [Check(_name(first, other), "warn", _telemetry_text(first, other, names), _HINT)
              for first, other, names in _conflicts(items, proxies, telemetry_selects,
                                                      False)]
    return [Group("Telemetry", tuple(checks))] if checks else []


def sidecar_conflict_warnings(applied: Iterable[Any], stored: Iterable[Any],
                              proxies: list[dict[str, Any]]) -> list[str]:
    """``meshctl apply``'s warnings: the stored Sidecars (the applied ones among them) whose
    selectors match one registered sidecar with an applied one's."""
    keys = {(s.namespace, s.name) for s in applied}
    items = [s for s in stored if isinstance(s.spec, SidecarSpec) and s.spec.labels]
    return [f"{_name(first, other)}: {_sidecar_text(first, other, names)}"
            for first, other, names in _conflicts(items, proxies, _sidecar_selects,
                                                    True)
            if {(first.namespace, first.name), (other.namespace, other.name)} & keys]

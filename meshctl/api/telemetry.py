"""Telemetry: access logging and trace sampling for one namespace or its selected workloads.

Istio's kind, where it fits Ami: ``selector.matchLabels`` (absent: every workload of the
namespace) matches a sidecar's labels, ``app`` being its service unless it registered one.
Precedence is workload > namespace > MeshConfig (Ami has no root namespace: MeshConfig is the
mesh-wide level). Access logging is decided by the most specific level that has an
``accessLogging`` entry; each tracing field by the most specific level that sets it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from meshctl.api import fields as F
from meshctl.api.accessfilter import FilterError, compile_filter
from meshctl.api.errors import fail
from meshctl.api.fields import Fields
from meshctl.api.workloads import workload_labels


@dataclass(frozen=True, slots=True)
class AccessLogging:
    """One ``accessLogging`` entry: on unless ``disabled``; ``filter`` picks the requests."""

    disabled: bool = False
    filter: str | None = None


@dataclass(frozen=True, slots=True)
class TelemetryTracing:
    """One ``tracing`` entry; a field left None defers to the next level."""

    sampling_percentage: float | None = None
    disable_span_reporting: bool | None = None


@dataclass(frozen=True, slots=True)
class TelemetrySpec:
    """spec of a Telemetry: ``match_labels`` None = every workload of its namespace."""

    match_labels: Mapping[str, str] | None = None
    access_logging: AccessLogging | None = None
    tracing: TelemetryTracing | None = None


def filter_expression(value: object, path: str) -> str:
    """A filter expression that compiles (see meshctl.api.accessfilter)."""
    text = F.string()(value, path)
    try:
        compile_filter(text)
    except FilterError as err:
        fail(path, f"{err} in {text!r}")
    return text


def parse_telemetry(data: object, path: str) -> TelemetrySpec:
    """Parse Telemetry.spec."""
    f = Fields(data, path)
    labels = f.optional("selector", _parse_selector)
    access = f.optional("accessLogging", _one_of(_parse_access_logging, "accessLogging"))
    tracing = f.optional("tracing", _one_of(_parse_tracing, "tracing"))
    f.finish()
    return TelemetrySpec(labels, access, tracing)


def _one_of(parse: Any, what: str) -> Any:
    """A list of one entry: Ami has one access log (JSON lines on stdout) and one tracer."""
    def convert(data: object, path: str) -> Any:
        items = F.list_of(parse, 1, "at least one entry is required")(data, path)
        if len(items) > 1:
            fail(f"{path}[1]", f"one {what} entry only (Ami has one provider, no providers "
                 "list)")
        return items[0]

    return convert


def _parse_selector(data: object, path: str) -> dict[str, str]:
    f = Fields(data, path)
    labels = f.required("matchLabels", F.labels, {})
    if f.has("matchLabels") and not labels and not f.issues:
        f.add(f.at("matchLabels"), "at least one label is required (leave selector out for "
              "the whole namespace)")
    f.finish()
    return labels


def _parse_access_logging(data: object, path: str) -> AccessLogging:
    f = Fields(data, path)
    disabled = f.value("disabled", F.boolean, False)
    expression = f.optional("filter", _parse_filter)
    f.finish()
    return AccessLogging(disabled, expression)


def _parse_filter(data: object, path: str) -> str:
    f = Fields(data, path)
    expression = f.required("expression", filter_expression, "")
    f.finish()
    return expression


def _parse_tracing(data: object, path: str) -> TelemetryTracing:
    f = Fields(data, path)
    percentage = f.optional("randomSamplingPercentage", F.number(0, 100))
    disable = f.optional("disableSpanReporting", F.boolean)
    f.finish()
    return TelemetryTracing(percentage, disable)


def selects(spec: TelemetrySpec, service: str, labels: Mapping[str, str]) -> bool:
    """Whether a workload-level Telemetry selects a sidecar of ``service`` with ``labels``."""
    if spec.match_labels is None:
        return False
    own = workload_labels(service, labels)
    return all(own.get(k) == v for k, v in spec.match_labels.items())


def effective(declared: Iterable[tuple[str, str, TelemetrySpec]], namespace: str,
              service: str, labels: Mapping[str, str]) -> dict[str, Any] | None:
    """The snapshot's ``telemetry`` for one sidecar from (namespace, name, spec) triples, or
    None when no Telemetry applies (its snapshot then keeps its bytes). Among several
    workload-level ones selecting it, the first by name wins (Istio leaves it undefined)."""
    own = sorted(((name, spec) for ns, name, spec in declared if ns == namespace),
                 key=lambda item: item[0])
    levels = ([spec for _, spec in own if selects(spec, service, labels)]
              + [spec for _, spec in own if spec.match_labels is None])
    if not levels:
        return None
    out: dict[str, Any] = {}
    access = next((s.access_logging for s in levels if s.access_logging is not None), None)
    if access is not None:
        out["accessLog"] = {"disabled": access.disabled,
                            **({"filter": access.filter} if access.filter else {})}
    tracing: dict[str, Any] = {}
    sampling = next((s.tracing.sampling_percentage for s in levels
                     if s.tracing is not None and s.tracing.sampling_percentage is not None),
                    None)
    if sampling is not None:
        tracing["sampling"] = sampling / 100.0  # as mesh.tracing.sampling, a probability
    disable = next((s.tracing.disable_span_reporting for s in levels
                    if s.tracing is not None and s.tracing.disable_span_reporting is not None),
                   None)
    if disable is not None:
        tracing["disableSpanReporting"] = disable
    if tracing:
        out["tracing"] = tracing
    return out or None  # (one that sets nothing changes nothing: the bytes stay)

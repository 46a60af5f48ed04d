"""Istio Telemetry -> Ami Telemetry: the access log and tracing entries, providers checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshctl.api import fields as F
from meshctl.api.fields import Fields
from meshctl.api.istio.common import (
    Translation,
    ami_doc,
    done,
    items,
    metadata,
    nested,
    not_root,
    refuse,
)

# Istio's built-in access log provider (Envoy's, to stdout): Ami's one access log
ACCESS_LOG_PROVIDERS = ("envoy",)
DEFAULT_MODE = "CLIENT_AND_SERVER"  # Istio's: both sides of a call, as Ami's sidecars log


def translate(doc: Mapping[str, Any], origin: str) -> list[Translation]:
    """The Telemetry of a Telemetry, named as it."""
    meta = metadata(doc)
    f = Fields(doc.get("spec"), "spec")
    not_root(f, meta, "Telemetry", "MeshConfig's accessLog and tracing.sampling are Ami's "
                                   "mesh-wide level")
    spec: dict[str, Any] = {}
    if f.has("selector"):
        spec["selector"] = f.raw("selector")
    for key in ("targetRef", "targetRefs"):
        refuse(f, key, "a Telemetry selects workloads by selector.matchLabels")
    refuse(f, "metrics", "metrics overrides; Ami's metrics are one fixed set "
                         "(docs/observability.md): none is disabled, renamed or tagged "
                         "per workload")
    logging = [_access_logging(f, path, data) for path, data in items(f, "accessLogging")]
    if f.has("accessLogging"):
        spec["accessLogging"] = logging
    tracing = [_tracing(f, path, data) for path, data in items(f, "tracing")]
    if f.has("tracing"):
        spec["tracing"] = tracing
    f.finish()
    t = Translation(ami_doc("Telemetry", meta, spec, origin), origin)
    t.at("spec", "spec")
    return [t]


def _entry(f: Fields, path: str, data: object) -> Fields | None:
    if not isinstance(data, Mapping):
        f.add(path, f"expected a mapping, got {F.describe(data)}")
        return None
    e = Fields(data, path)
    match = nested(e, "match")
    if match is not None:
        mode = match.raw("mode")
        if mode not in (None, DEFAULT_MODE):
            match.add(match.at("mode"), f"not supported by Ami: mode {mode!r}; an entry is "
                                        f"about both sides of a call ({DEFAULT_MODE}, "
                                        "Istio's default)")
        done(e, match)
    return e


def _access_logging(f: Fields, path: str, data: object) -> dict[str, Any]:
    e = _entry(f, path, data)
    if e is None:
        return {}
    out = {k: e.raw(k) for k in ("disabled", "filter") if e.has(k)}
    for ppath, provider in items(e, "providers"):
        name = provider.get("name") if isinstance(provider, Mapping) else None
        if name not in ACCESS_LOG_PROVIDERS:
            e.add(ppath, f"not supported by Ami: access log provider {name!r}; Ami has one, "
                         "envoy (Istio's built-in: JSON lines on the proxy's stdout)")
        elif len(provider) > 1:
            e.add(ppath, "a provider reference is {name: NAME}")
    done(f, e)
    return out


def _tracing(f: Fields, path: str, data: object) -> dict[str, Any]:
    e = _entry(f, path, data)
    if e is None:
        return {}
    out = {k: e.raw(k) for k in ("randomSamplingPercentage", "disableSpanReporting")
           if e.has(k)}
    refuse(e, "providers", "tracing providers; Ami has one tracer, not named: OTLP to "
                           "MeshConfig's tracing.otlpEndpoint (leave providers out)")
    refuse(e, "customTags", "customTags; Ami's spans carry a fixed set of attributes")
    refuse(e, "useRequestIdForTraceSampling", "useRequestIdForTraceSampling; Ami samples "
                                              "each trace at its start")
    done(f, e)
    return out

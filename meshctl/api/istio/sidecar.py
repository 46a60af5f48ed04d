"""Istio Sidecar -> Ami Sidecar: written the same way; Istio's root namespace refused."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshctl.api.fields import Fields
from meshctl.api.istio.common import Translation, ami_doc, done, metadata, nested, not_root, refuse

# taken as written: Ami's Sidecar reads Istio's fields, and refuses by name those it has not
# (ingress, inboundConnectionPool, egress[].port, bind, captureMode)
SAME = ("workloadSelector", "egress", "ingress", "inboundConnectionPool")


def translate(doc: Mapping[str, Any], origin: str) -> list[Translation]:
    """The Sidecar of a Sidecar, named as it."""
    meta = metadata(doc)
    f = Fields(doc.get("spec"), "spec")
    not_root(f, meta, "Sidecar", "give each namespace a Sidecar of its own (Istio's default "
                                 "Sidecar is a namespace-wide one in each namespace)")
    spec = {k: f.raw(k) for k in SAME if f.has(k)}
    outbound = nested(f, "outboundTrafficPolicy")
    if outbound is not None:
        # (no mode: the enum's zero, REGISTRY_ONLY, as Istio reads it)
        spec["outboundTrafficPolicy"] = {"mode": outbound.raw("mode") if outbound.has("mode")
                                         else "REGISTRY_ONLY"}
        refuse(outbound, "egressProxy", "egressProxy; under ALLOW_ANY the sidecar reaches an "
                                        "unknown host directly")
        done(f, outbound)
    f.finish()
    t = Translation(ami_doc("Sidecar", meta, spec, origin), origin)
    t.at("spec", "spec")
    return [t]

"""Istio PeerAuthentication and RequestAuthentication -> Ami's kinds of the same names."""

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
    not_root,
    refuse,
    service_selector,
)

JWT_FIELDS = ("issuer", "audiences", "jwks", "jwksUri", "fromHeaders", "fromParams",
              "forwardOriginalToken", "outputPayloadToHeader")


def translate_peer(doc: Mapping[str, Any], origin: str) -> list[Translation]:
    """Ami's PeerAuthentication is written as Istio's: the spec as it is."""
    meta = metadata(doc)
    f = Fields(doc.get("spec", {}), "spec")
    not_root(f, meta, "PeerAuthentication", "the mesh-wide mode is MeshConfig's spec.mtls.mode")
    spec = {k: f.raw(k) for k in ("selector", "mtls", "portLevelMtls") if f.has(k)}
    for key in ("targetRef", "targetRefs"):
        refuse(f, key, "a PeerAuthentication selects workloads by selector.matchLabels")
    f.finish()
    t = Translation(ami_doc("PeerAuthentication", meta, spec, origin), origin)
    t.at("spec", "spec")
    return [t]


def translate_request(doc: Mapping[str, Any], origin: str) -> list[Translation]:
    """Ami's RequestAuthentication: `selector.matchLabels: {app: NAME}` is `service: NAME`."""
    meta = metadata(doc)
    f = Fields(doc.get("spec", {}), "spec")
    not_root(f, meta, "RequestAuthentication", "write it in each namespace it is for")
    spec: dict[str, Any] = {}
    selector = service_selector(f, "RequestAuthentication")
    if selector is not None:
        spec["selector"] = selector
    rules = []
    for path, data in items(f, "jwtRules"):
        if not isinstance(data, Mapping):
            f.add(path, f"expected a mapping, got {F.describe(data)}")
            continue
        r = Fields(data, path)
        rules.append({k: r.raw(k) for k in JWT_FIELDS if r.has(k)})
        refuse(r, "fromCookies", "tokens in cookies; use fromHeaders or fromParams")
        refuse(r, "outputClaimToHeaders", "outputClaimToHeaders; outputPayloadToHeader passes "
                                          "the whole verified payload")
        refuse(r, "timeout", "timeout (the control plane fetches jwksUri itself, see meshctl "
                             "serve --jwks-refresh)")
        done(f, r)
    if f.has("jwtRules"):
        spec["jwtRules"] = rules
    f.finish()
    t = Translation(ami_doc("RequestAuthentication", meta, spec, origin), origin)
    t.at("spec.jwtRules", "spec.jwtRules")
    t.at("spec.selector.service", "spec.selector.matchLabels.app")
    return [t]

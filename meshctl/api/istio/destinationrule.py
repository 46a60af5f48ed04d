"""Istio DestinationRule -> Ami DestinationPolicy: the traffic policy flattened into the spec."""

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
    refuse,
)

# Istio's simple load balancers as Ami's (LEAST_CONN: Istio's deprecated name of LEAST_REQUEST)
SIMPLE = {"ROUND_ROBIN": "ROUND_ROBIN", "LEAST_REQUEST": "LEAST_REQUEST",
          "LEAST_CONN": "LEAST_REQUEST", "RANDOM": "RANDOM"}
HASH_KEYS = {"httpHeaderName": "header", "httpQueryParameterName": "queryParameter",
             "httpCookie": "httpCookie", "useSourceIp": "sourceIp"}


def translate(doc: Mapping[str, Any], origin: str) -> list[Translation]:
    """The DestinationPolicy of a DestinationRule, named as it."""
    meta = metadata(doc)
    f = Fields(doc.get("spec"), "spec")
    spec: dict[str, Any] = {}
    paths: list[tuple[str, str]] = [("spec.host", "spec.host")]
    if f.has("host"):
        spec["host"] = f.raw("host")
    else:
        f.add(f.at("host"), "field is required")
    spec.update(_policy(f, "trafficPolicy", "spec", paths, subset=False))
    subsets = []
    for i, (path, data) in enumerate(items(f, "subsets")):
        subsets.append(_subset(f, path, data, f"spec.subsets[{i}]", paths))
    if subsets:
        spec["subsets"] = subsets
        paths.append(("spec.subsets", "spec.subsets"))
    value = f.raw("exportTo")
    if value not in (None, [], ["*"]):  # (an empty list: every namespace, as in Istio)
        f.add(f.at("exportTo"), "not supported by Ami: exportTo other than [\"*\"]; a "
                                "DestinationPolicy in its service's namespace is every "
                                "caller's that has none of its own")
    refuse(f, "workloadSelector", "workloadSelector; a DestinationPolicy applies to every "
                                  "caller of its namespace")
    f.finish()
    t = Translation(ami_doc("DestinationPolicy", meta, spec, origin), origin)
    for ami, istio in paths:
        t.at(ami, istio)
    return [t]


def _subset(f: Fields, path: str, data: object, ami: str,
            paths: list[tuple[str, str]]) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        f.add(path, f"expected a mapping, got {F.describe(data)}")
        return {}
    s = Fields(data, path)
    out = {k: s.raw(k) for k in ("name", "labels") if s.has(k)}
    out.update(_policy(s, "trafficPolicy", ami, paths, subset=True))
    done(f, s)
    return out


def _policy(f: Fields, key: str, ami: str, paths: list[tuple[str, str]], *,
            subset: bool) -> dict[str, Any]:
    """A TrafficPolicy as the flat fields of an Ami spec (or subset) at ``ami``."""
    p = nested(f, key)
    if p is None:
        return {}
    out: dict[str, Any] = {}
    for name in ("connectionPool", "outlierDetection"):
        if p.has(name):
            out[name] = p.raw(name)
            paths.append((f"{ami}.{name}", p.at(name)))
    out.update(_load_balancer(p, ami, paths, subset))
    tls = _tls(p, subset)
    if tls is not None:
        out["tls"] = tls
        paths.append((f"{ami}.tls", p.at("tls")))
    refuse(p, "portLevelSettings", "portLevelSettings; an Ami service serves one port, so "
                                   "its policy is the port's: move the port's settings up "
                                   "into this trafficPolicy")
    refuse(p, "proxyProtocol", "proxyProtocol toward a destination")
    refuse(p, "tunnel", "tunnel (CONNECT) settings")
    done(f, p)
    return out


def _load_balancer(p: Fields, ami: str, paths: list[tuple[str, str]],
                   subset: bool) -> dict[str, Any]:
    lb = nested(p, "loadBalancer")
    if lb is None:
        return {}
    out: dict[str, Any] = {}
    if lb.has("simple"):
        simple = lb.raw("simple")
        if simple in SIMPLE:
            out["loadBalancer"] = SIMPLE[simple]
        elif simple != "UNSPECIFIED":
            lb.add(lb.at("simple"), f"not supported by Ami: {simple!r}; expected one of "
                                    f"{', '.join(SIMPLE)} (PASSTHROUGH: Ami always picks "
                                    "the endpoint itself)")
    hashed = nested(lb, "consistentHash")
    if hashed is not None and lb.has("simple"):
        lb.add(lb.at("consistentHash"), "give simple or consistentHash, not both (Istio's "
                                        "oneof)")
    if hashed is not None:
        out["loadBalancer"] = "CONSISTENT_HASH"
        key = {target: hashed.raw(source) for source, target in HASH_KEYS.items()
               if hashed.has(source)}
        out["consistentHash"] = key
        paths.append((f"{ami}.consistentHash", hashed.path))
        for source, target in HASH_KEYS.items():
            paths.append((f"{ami}.consistentHash.{target}", hashed.at(source)))
        for name in ("ringHash", "maglev", "minimumRingSize"):
            refuse(hashed, name, f"{name}; Ami chooses its own hash ring")
        done(lb, hashed)
    for name in ("localityLbSetting", "warmup", "warmupDurationSecs"):
        if lb.has(name):
            out[name] = lb.raw(name)
            paths.append((f"{ami}.{name}", lb.at(name)))
    if subset and not out:
        # Istio: a subset's loadBalancer replaces the host's whole, so `{}` or UNSPECIFIED
        # is the default balancer, not the host's
        out["loadBalancer"] = "LEAST_REQUEST"
    paths.append((f"{ami}.loadBalancer", lb.path))
    done(p, lb)
    return out


def _tls(p: Fields, subset: bool) -> dict[str, Any] | None:
    """ClientTLSSettings: ISTIO_MUTUAL is what every Ami mesh hop does (none needed)."""
    tls = nested(p, "tls")
    if tls is None:
        return None
    mode = tls.raw("mode")
    out = {k: tls.raw(k) for k in ("mode", "clientCertificate", "privateKey",
                                   "caCertificates", "sni") if tls.has(k)}
    for name in ("credentialName", "subjectAltNames", "insecureSkipVerify", "caCrl"):
        if not (name == "insecureSkipVerify" and tls.raw(name) is False):  # (the default)
            refuse(tls, name, f"tls.{name}")
    done(p, tls)
    if mode == "ISTIO_MUTUAL":
        if len(out) > 1:
            p.add(p.at("tls"), "ISTIO_MUTUAL takes no other field: Ami's mesh hops are mTLS "
                               "with the mesh's own certificates")
        return None
    if subset:
        p.add(p.at("tls"), "not supported by Ami: tls in a subset (only ISTIO_MUTUAL, which "
                           "Ami's mesh hops are anyway); set it on the host's trafficPolicy")
        return None
    return out

"""Resource documents the mesh tests declare again and again, as YAML text."""

from __future__ import annotations

from typing import Any

import yaml

API_VERSION = "ami.mesh/v1alpha1"


class _Dumper(yaml.SafeDumper):
    """Writes a dict used twice out twice: the loader refuses YAML anchors and aliases."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def document(kind: str, name: str, spec: dict[str, Any], namespace: str | None = None) -> str:
    """One document of ``kind`` (the factories below are this with the spec spelled out)."""
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return yaml.dump({"apiVersion": API_VERSION, "kind": kind, "metadata": metadata,
                      "spec": spec}, Dumper=_Dumper, sort_keys=False)


def documents(*docs: str) -> str:
    """Several documents as one YAML stream."""
    return "---\n".join(docs)


def mesh_config(mtls: str | None = None, **spec: Any) -> str:
    """The MeshConfig; ``mtls``: its mode (DISABLE, PERMISSIVE, STRICT)."""
    return document("MeshConfig", "default",
                    {**({"mtls": {"mode": mtls}} if mtls else {}), **spec})


def subset(name: str | dict[str, Any]) -> dict[str, Any]:
    """A subset selecting ``version: name``; a dict is ``{"name": ..., **its own fields}``."""
    own = dict(name) if isinstance(name, dict) else {"name": name}
    label = own.pop("name")
    return {"name": label, "labels": {"version": label}, **own}


def destination_policy(host: str, subsets: tuple[str | dict[str, Any], ...] = ("v1", "v2"),
                       *, name: str | None = None, namespace: str | None = None,
                       **spec: Any) -> str:
    """A DestinationPolicy named after ``host`` with one subset per version label (a dict:
    a subset with fields of its own, e.g. ``{"name": "v2", "loadBalancer": "RANDOM"}``)."""
    return document("DestinationPolicy", name or host, {
        "host": host, **spec, "subsets": [subset(s) for s in subsets]}, namespace)


def split(weights: dict[str, int]) -> dict[str, Any]:
    """A rule sending to subsets by weight, e.g. ``{"v1": 90, "v2": 10}``."""
    return {"backends": [{"subset": s, "weight": w} for s, w in weights.items()]}


def header_rule(subset: str, value: str = "jason", header: str = "end-user",
                name: str | None = None) -> dict[str, Any]:
    """A rule sending requests whose ``header`` is exactly ``value`` to ``subset``."""
    return {**({"name": name} if name else {}),
            "matches": [{"headers": {header: {"exact": value}}}],
            "backends": [{"subset": subset}]}


def route(host: str, weights: dict[str, int] | None = None, *,
          rules: list[dict[str, Any]] | None = None, name: str | None = None,
          namespace: str | None = None) -> str:
    """A Route for ``host``: ``rules`` first, then the ``weights`` split (if given)."""
    return document("Route", name or host, {
        "host": host, "rules": [*(rules or []), *([split(weights)] if weights else [])]},
        namespace)


def peer_authentication(name: str, mode: str, service: str | None = None) -> str:
    """A PeerAuthentication of the default namespace, for ``service`` only if given."""
    return document("PeerAuthentication", name, {
        **({"selector": {"service": service}} if service else {}), "mtls": {"mode": mode}})

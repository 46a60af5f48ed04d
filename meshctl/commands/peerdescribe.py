"""``meshctl describe peerauthentication``: each registered sidecar it selects, with its app
port and its effective mode (and which level decides it), from the namespace's
PeerAuthentications and MeshConfig, as the control plane computes them."""

from __future__ import annotations

from typing import Any

from meshctl import output
from meshctl.api.errors import ValidationError
from meshctl.api.kinds import MeshConfigSpec
from meshctl.api.peerauthn import MtlsModes, PeerAuthenticationSpec, selects
from meshctl.api.resources import Resource, parse_document
from meshctl.api.workloads import workload_labels


def _parsed(docs: list[dict[str, Any]]) -> list[Resource]:
    found = []
    for doc in docs:
        try:
            found.append(parse_document(doc))
        except ValidationError:
            continue  # the store's own check reports it
    return found


def selected_sidecars(doc: dict[str, Any], peers: list[dict[str, Any]],
                      meshes: list[dict[str, Any]], proxies: list[dict[str, Any]]) -> list[str]:
    """The lines of the `Sidecars:` section (none when it selects no registered sidecar)."""
    parsed = _parsed([doc])
    if not parsed or not isinstance(parsed[0].spec, PeerAuthenticationSpec):
        return []
    this, spec = parsed[0], parsed[0].spec
    mesh = next((r.spec for r in _parsed(meshes) if isinstance(r.spec, MeshConfigSpec)),
                MeshConfigSpec())
    declared = sorted((r.name, r.spec) for r in _parsed(peers)
                      if isinstance(r.spec, PeerAuthenticationSpec)
                      and r.namespace == this.namespace)
    modes = MtlsModes(mesh.mtls_mode, [(this.namespace, s) for _, s in declared])
    selector, rows = spec.selector, []
    for p in sorted(proxies, key=lambda p: str(p.get("name", ""))):
        service, labels = str(p.get("service") or ""), dict(p.get("labels") or {})
        gateway = p.get("mode") == "gateway"
        if (str(p.get("namespace") or "default") != this.namespace
                or (selector is None and gateway)
                or (selector is not None
                    and not selects(selector, workload_labels(service, labels)))):
            continue
        port = int(p.get("appPort") or 0)
        level = modes.decided_by(this.namespace, service, not gateway, labels, port)
        by = ("mesh" if level is None else "this" if level == (this.namespace,
                                                                 spec.selector_text)
              else "namespace" if level[1] is None else f"selector {level[1]}")
        if by == "this" and port and port in dict(spec.ports):
            by = f"this, port {port}"
        rows.append([str(p.get("name", "")), service, str(p.get("version", "")),
                     str(port or "-"),
                     modes.mode(this.namespace, service, not gateway, labels, port), by])
    if not rows:
        return ["Sidecars:          <none registered>"]
    table = output.render_table(["NAME", "SERVICE", "VERSION", "APP-PORT", "MTLS",
                                 "DECIDED-BY"], rows)
    return ["Sidecars:", *(f"  {line}" for line in table.splitlines())]

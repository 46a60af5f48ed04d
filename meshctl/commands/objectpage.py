"""The ``meshctl describe KIND NAME`` page of a stored object: its metadata, status and spec,
then every proxy's sync state (kubectl-describe-like)."""

from __future__ import annotations

from typing import Any

from meshctl import output
from meshctl.commands.canarypage import canary_lines
from meshctl.commands.proxystatus import status_word


def describe_text(doc: dict[str, Any], store_version: int | None,
                  proxies: list[dict[str, Any]] | None) -> str:
    """kubectl-describe-like text for an object and the proxies' sync state."""
    meta = doc.get("metadata", {})
    labels = ",".join(f"{k}={v}" for k, v in sorted((meta.get("labels") or {}).items()))
    annotations = ",".join(f"{k}={v}"
                           for k, v in sorted((meta.get("annotations") or {}).items()))
    lines = [f"Name:              {meta.get('name')}",
             f"Namespace:         {meta.get('namespace', 'default')}",
             f"Kind:              {doc.get('kind')}",
             f"Labels:            {labels or '<none>'}",
             # (only where there are some: `istio.io/dry-run` makes a policy enforce nothing)
             *([f"Annotations:       {annotations}"] if annotations else []),
             f"Resource Version:  {meta.get('resourceVersion')}",
             f"Status:            {output.status_text(doc)}"]
    if doc.get("kind") == "Canary":  # what the control plane's canary run says
        lines += canary_lines(doc)
    if doc.get("kind") in ("HTTPRoute", "GRPCRoute"):  # Gateway API status: per parent Service
        lines += _parent_lines(doc)
    conditions = (doc.get("status") or {}).get("conditions") or []
    if conditions:
        lines.append("Conditions:")
        rows = [[str(c.get(k, "")) for k in ("type", "status", "reason", "lastTransitionTime")]
                for c in conditions]
        lines += _indent(output.render_table(["TYPE", "STATUS", "REASON", "SINCE"], rows))
        lines += [f"  {c.get('type')}: {line}" for c in conditions
                  for line in str(c.get("message") or "").splitlines()]
    lines.append("Spec:")
    lines += _indent(output.to_yaml(doc.get("spec") or {}))
    if proxies is None:
        lines.append("Proxies:           proxy status unavailable")
    elif not proxies:
        lines.append(f"Proxies (store version {store_version}): <none>")
    else:
        lines.append(f"Proxies (store version {store_version}):")
        # VERSION is the workload's label, PROXY-VERSION the Ami version it runs (as in
        # proxy-status; "unknown" from proxies, or control planes, older than that field)
        rows = [[str(p.get("name", "")), str(p.get("service", "")), str(p.get("version", "")),
                 str(p.get("proxyVersion") or "unknown"), str(p.get("configVersion") or "-"),
                 status_word(p)]
                for p in sorted(proxies, key=lambda p: str(p.get("name", "")))]
        lines += _indent(output.render_table(
            ["NAME", "SERVICE", "VERSION", "PROXY-VERSION", "CONFIG-VERSION", "SYNC"], rows))
        lines += _gateway_trust(proxies)
    return "\n".join(lines) + "\n"


def _gateway_trust(proxies: list[dict[str, Any]]) -> list[str]:
    """Whether sidecars keep each gateway's x-forwarded-client-cert (``trustedGateway``;
    nothing from a control plane older than the field)."""
    words = {True: "trusted (gateway token): sidecars keep its x-forwarded-client-cert",
             False: "NOT trusted (service token): sidecars drop its x-forwarded-client-cert; "
                    "`meshctl check` says how to fix it"}
    gateways = sorted((p for p in proxies if p.get("mode") == "gateway"
                       and isinstance(p.get("trustedGateway"), bool)),
                      key=lambda p: str(p.get("name", "")))
    if not gateways:
        return []
    return ["Gateways:", *(f"  {p.get('name')}: {words[p['trustedGateway']]}"
                           for p in gateways)]


def _parent_lines(doc: dict[str, Any]) -> list[str]:
    """Whether an HTTPRoute is in effect for each Service it attaches to, and why not."""
    parents = (doc.get("status") or {}).get("parents") or []
    lines = ["Parents:" if parents else "Parents:          status unavailable"]
    for parent in parents:
        ref = parent.get("parentRef") or {}
        lines.append(f"  Service {ref.get('namespace')}/{ref.get('name')}:")
        lines += [f"    {c.get('type')}={c.get('status')} ({c.get('reason')}): "
                  f"{c.get('message')}" for c in parent.get("conditions") or []]
    return lines


def _indent(text: str) -> list[str]:
    return [f"  {line}" for line in text.splitlines()]

"""The archive's ``summary.txt``: versions, unsynced proxies, failing checks, errors, contents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshctl.api.build import BUILD, VERSION
from meshctl.bugreport.collect import Collected
from meshctl.commands.proxystatus import render_table, status_word
from meshctl.commands.version import proxies_text

# What each top-level member is, for the CONTENTS list (proxies/ and resources/ say themselves).
ABOUT = {
    "summary.txt": "this file",
    "errors.txt": "one line per part that could not be collected",
    "version.json": "GET /api/v1/version: control plane and data plane versions",
    "proxy-status.json": "GET /api/v1/proxies: every proxy (meshctl proxy-status -o json)",
    "sync.json": "GET /api/v1/sync?timeout=0: whether every proxy ACKed the latest store version",
    "store-errors.json": "GET /api/v1/errors: hand edits the control plane rejected",
    "check.json": "GET /api/v1/check: meshctl check's groups",
    "stat.json": "GET /api/v1/stat: golden metrics per service version",
    "edges.json": "GET /api/v1/edges: who calls whom",
    "controlplane-metrics.txt": "GET /metrics: the control plane's own Prometheus metrics",
}


@dataclass(frozen=True)
class Meta:
    created: str  # RFC 3339, UTC
    control_plane: str
    window: str
    service: str | None
    config_dumps: bool


def failing_checks(check: Any) -> list[str]:
    """``[fail] group / check: detail`` for each check not ok (warn too: support wants both)."""
    lines = []
    for group in (check or {}).get("groups") or []:
        for c in group.get("checks") or []:
            if c.get("state") != "ok":
                detail = f": {c['detail']}" if c.get("detail") else ""
                lines.append(f"[{c.get('state')}] {group.get('title')} / {c.get('name')}{detail}")
    return lines


def render(meta: Meta, got: Collected, sizes: dict[str, int]) -> str:
    version = got.answers.get("version.json") or {}
    proxies = (got.answers.get("proxy-status.json") or {}).get("proxies") or []
    data_plane = version.get("dataPlane")
    dumps = "included" if meta.config_dumps else "not included (--include-config-dumps)"
    lines = [
        "Ami bug report (meshctl bug-report)",
        "",
        f"created:        {meta.created}",
        f"API:            {meta.control_plane}",  # "control plane:" is its version, below
        f"meshctl:        {VERSION} ({BUILD})",
        f"control plane:  {version.get('version', 'unknown')} ({version.get('build') or '-'})",
        "data plane:     " + (proxies_text(data_plane) if isinstance(data_plane, list)
                               else "unknown"),
        f"window:         {meta.window} (stat, edges)",
        f"scope:          {('service ' + meta.service) if meta.service else 'every service'}"
        f"; config dumps {dumps}",
        "secrets:        redacted (the API token, credential fields and headers, JWTs, "
        "private keys)",
    ]
    if "route namespaces" in got.answers:
        lines.append("routes:         listed in the namespaces of proxies and other resources: "
                     f"{', '.join(got.answers['route namespaces'])} (this control plane's "
                     "GET /api/v1/routes answers route metrics, not every namespace's Routes)")
    unsynced = [p for p in proxies if status_word(p) != "SYNCED"]
    lines += ["", f"PROXIES ({len(proxies)}, {len(unsynced)} not in sync)"]
    lines.append(render_table(proxies) if proxies else "(no proxy registered)")
    lines += ["", "NOT IN SYNC"]
    lines += [f"{p.get('name')}: {status_word(p)}" for p in unsynced] or ["(none)"]
    lines += ["", "FAILING CHECKS"]
    if "check.json" in got.answers:
        lines += failing_checks(got.answers["check.json"]) or ["(none)"]
    else:
        lines.append("(not collected: see errors.txt)")
    lines += ["", f"ERRORS ({len(got.errors)}; errors.txt)"]
    lines += got.errors or ["(none)"]
    lines += ["", "CONTENTS"]
    width = max(len(p) for p in sizes)
    for path, size in sizes.items():
        about = ABOUT.get(path) or _about(path)
        lines.append(f"{path.ljust(width)}  {_size(size):>9}  {about}")
    return "\n".join(lines) + "\n"


def _about(path: str) -> str:
    if path.startswith("resources/"):
        return "resources of this kind, every namespace (meshctl apply -f takes it back)"
    if path.endswith("/status.json"):
        return "this proxy's proxy-status entry"
    if path.endswith("/config_dump.json"):
        return "this proxy's running config (meshctl proxy-config -o json)"
    if path.startswith("routes-"):
        return "GET /api/v1/routes: golden metrics per Route rule of the service"
    return ""


def _size(n: int) -> str:
    if n < 0:
        return "-"  # summary.txt's own size is not known while it is written
    return f"{n} B" if n < 1000 else f"{n / 1000:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"

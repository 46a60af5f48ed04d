"""The Canary part of ``meshctl describe canary NAME``: phase, weight, the last analysis'
figures, the webhooks' last answers and the controller's events (from the object's status)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshctl import output


def canary_lines(doc: Mapping[str, Any]) -> list[str]:
    status = doc.get("status") or {}
    spec = doc.get("spec") or {}
    weight = int(status.get("canaryWeight", 0))
    lines = [f"Phase:             {status.get('phase', 'Initializing')} "
             f"(since {status.get('lastTransitionTime', '-')})",
             f"Weight:            {spec.get('stable')} {100 - weight}% / "
             f"{spec.get('canary')} {weight}%",
             f"Message:           {status.get('message', '-')}",
             f"Failed checks:     {status.get('failedChecks', 0)} in a row "
             f"(rolls back at {spec.get('failures', 2)})"]
    if status.get("waitingOn"):
        lines.append(f"Waiting on:        {status['waitingOn']}")
    last = status.get("lastAnalysis")
    if last:
        rate = last.get("successRate")
        p99 = last.get("p99Ms")
        failed = "; ".join(last.get("failedChecks") or []) or "none"
        lines += [f"Last analysis:     {last.get('time')} at {last.get('weight')}%: "
                  f"{last.get('requests')} requests, success "
                  f"{'-' if rate is None else f'{100 * rate:.2f}%'}, p99 "
                  f"{'-' if p99 is None else f'{p99:.0f}ms'}; failed: {failed}"]
    hooks = status.get("webhooks") or []
    if hooks:
        lines.append("Webhooks:")
        rows = [[str(h.get(k, "")) for k in ("name", "type", "result", "time")] for h in hooks]
        lines += [f"  {line}" for line in output.render_table(
            ["NAME", "TYPE", "LAST RESULT", "TIME"], rows).splitlines()]
    events = status.get("events") or []
    if events:
        lines.append("Events:")
        rows = [[str(e.get("time", "")), str(e.get("weight", "")), str(e.get("phase", "")),
                 str(e.get("message", ""))] for e in events]
        lines += [f"  {line}" for line in output.render_table(
            ["TIME", "WEIGHT", "PHASE", "MESSAGE"], rows).splitlines()]
    return lines

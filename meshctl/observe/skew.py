"""Version skew: which proxy versions a control plane supports, and `meshctl check`'s line.

Supported: a proxy on the control plane's version, or one minor version older (same major);
never newer (as with Istio, whose data plane may lag its control plane, never lead it), since
an older control plane may refuse or leave out what a newer proxy expects. So the upgrade
order is the control plane first, then the proxies. A proxy that reports no version
("unknown") was built before proxies reported one: older than any control plane that asks.
"""

from __future__ import annotations

import re
from typing import Any

from meshctl.api.build import UNKNOWN, VERSION
from meshctl.observe.checks import Check

_RELEASE = re.compile(r"(\d+)\.(\d+)")


def _minor(version: str) -> tuple[int, int] | None:
    match = _RELEASE.match(version)
    return (int(match[1]), int(match[2])) if match else None


def skew(proxy: str, control_plane: str) -> str:
    """How ``proxy``'s version stands to ``control_plane``'s: "same", "patch" (another patch
    release of its minor version), "older" (one minor version behind), "too old", "newer" or
    "unknown" (not reported, or not a release number)."""
    if proxy == control_plane:
        return "same"
    ours, theirs = _minor(proxy), _minor(control_plane)
    if ours is None or theirs is None:
        return "unknown"
    if ours == theirs:
        return "patch"
    if ours > theirs:
        return "newer"
    return "older" if ours == (theirs[0], theirs[1] - 1) else "too old"


_WORDS = {"patch": "another patch release: supported",
          "older": "one minor version behind: supported",
          "too old": "more than one minor version behind: not supported",
          "newer": "newer than the control plane: not supported",
          "unknown": "not a release version"}


def version_check(proxies: list[dict[str, Any]], control_plane: str = VERSION) -> Check:
    """Warn, naming them by version, of connected proxies not on the control plane's version."""
    name = f"proxies run the control plane's version ({control_plane})"
    others: dict[str, list[str]] = {}
    for p in proxies:
        if p.get("connected", True):
            version = str(p.get("proxyVersion") or UNKNOWN)
            if version != control_plane:
                others.setdefault(version, []).append(str(p["name"]))
    if not others:
        return Check(name, "ok")
    detail = "; ".join(f"{v} ({_word(v, control_plane)}): {', '.join(sorted(names))}"
                       for v, names in sorted(others.items()))
    return Check(name, "warn", detail,
                 "proxies are supported on the control plane's version or one minor version "
                 "older (same major), never newer: upgrade the control plane first, then "
                 "restart each proxy on the new version; until all run it, use no resource "
                 "field the older ones do not know (they NACK it); `meshctl version` counts "
                 "proxies per version (docs/operations.md#upgrades-and-version-skew)")


def _word(version: str, control_plane: str) -> str:
    if version == UNKNOWN:
        return "built before proxies reported their version"
    return _WORDS[skew(version, control_plane)]

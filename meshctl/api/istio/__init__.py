"""Istio's own YAML (networking, security and telemetry.istio.io) translated into Ami's kinds.

Each Istio kind has a module turning its document into one or more Ami documents, which the
Ami parser then checks as its own; errors are reported on the Istio document's field paths.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from meshctl.api.errors import Issue, fail
from meshctl.api.istio import (
    authentication,
    authorization,
    destinationrule,
    gateway,
    serviceentry,
    sidecar,
    telemetry,
    virtualservice,
)
from meshctl.api.istio.common import Translation, istio_path

NETWORKING = "networking.istio.io"
SECURITY = "security.istio.io"
TELEMETRY = "telemetry.istio.io"
VERSIONS = {NETWORKING: ("v1", "v1beta1", "v1alpha3"), SECURITY: ("v1", "v1beta1"),
            TELEMETRY: ("v1", "v1alpha1")}
Translator = Callable[[Mapping[str, Any], str], list[Translation]]
KINDS: dict[tuple[str, str], Translator] = {
    (NETWORKING, "VirtualService"): virtualservice.translate,
    (NETWORKING, "DestinationRule"): destinationrule.translate,
    (NETWORKING, "Gateway"): gateway.translate,
    (NETWORKING, "ServiceEntry"): serviceentry.translate,
    (NETWORKING, "Sidecar"): sidecar.translate,
    (TELEMETRY, "Telemetry"): telemetry.translate,
    (SECURITY, "AuthorizationPolicy"): authorization.translate,
    (SECURITY, "PeerAuthentication"): authentication.translate_peer,
    (SECURITY, "RequestAuthentication"): authentication.translate_request,
}
# Istio kinds not translated, and what to write instead
INSTEAD = {"EnvoyFilter": "Ami's proxies are no Envoy; what they do is set by Ami's kinds"}


def is_istio(doc: object) -> bool:
    """Whether a decoded document is written with one of Istio's API groups."""
    version = doc.get("apiVersion") if isinstance(doc, Mapping) else None
    return isinstance(version, str) and version.split("/")[0].endswith(".istio.io")


def translate(doc: Mapping[str, Any]) -> list[Translation]:
    """The Ami documents of an Istio one; raises ValidationError on Istio's field paths."""
    version = str(doc.get("apiVersion"))
    group, _, number = version.partition("/")
    kind = doc.get("kind")
    translator = KINDS.get((group, kind)) if isinstance(kind, str) else None
    if translator is None:
        known = ", ".join(f"{k} ({g})" for g, k in KINDS)
        hint = INSTEAD.get(kind, "") if isinstance(kind, str) else ""
        fail("kind", f"Istio's {kind!r} of {group} is not translated by Ami"
                     + (f": {hint}" if hint else "") + f"; Ami translates {known}")
    if number not in VERSIONS[group]:
        fail("apiVersion", f"unsupported {version!r} for kind {kind}, expected "
                           + " or ".join(f"{group}/{v}" for v in VERSIONS[group]))
    name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"),
                                                                  Mapping) else None
    origin = f"{kind.lower()}.{group}/{name}"  # type: ignore[union-attr]
    return translator(doc, origin)


def relocated(issues: Iterable[Issue],
              paths: Mapping[tuple[str, int], Sequence[tuple[str, str]]]) -> list[Issue]:
    """Issues found on translated documents (checks across documents), each on the Istio
    document's path; ``paths``: the path map of each translated (file, document)."""
    out = []
    for issue in issues:
        found = paths.get((issue.source, issue.doc)) if issue.source is not None \
            and issue.doc is not None else None
        out.append(issue if found is None else
                   dataclasses.replace(issue, path=istio_path(found, issue.path)))
    return out

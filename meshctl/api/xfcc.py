"""The peers whose `x-forwarded-client-cert` an inbound sidecar keeps: SPIFFE ids, checked."""

from __future__ import annotations

import re

from meshctl.api import fields as F
from meshctl.api.errors import fail

# The form of every identity the mesh CA issues (meshctl.ca.spiffe.spiffe_id_for): a peer
# presenting anything else never completes a sidecar's handshake, so such an entry is a typo.
_LABEL = F.DNS_LABEL[1:-1]
WORKLOAD_ID = rf"^spiffe://([^/\s]+)/ns/{_LABEL}/sa/{_LABEL}$"  # (also the JSON Schema's)
_WORKLOAD_ID = re.compile(WORKLOAD_ID)


def trusted_xfcc_identities(trust_domain: str) -> F.Conv[tuple[str, ...]]:
    """A list of workload SPIFFE ids of ``trust_domain`` (MeshConfig.spec and a snapshot's
    ``mesh.trustedXfccIdentities``); every bad item is reported with its index."""
    form = f"spiffe://{trust_domain}/ns/<namespace>/sa/<service>"

    def identity(value: object, path: str) -> str:
        text = F.string()(value, path)
        match = _WORKLOAD_ID.fullmatch(text)
        if match is None:
            fail(path, f"invalid value {text!r}, expected a workload SPIFFE id like {form}")
        if match.group(1) != trust_domain:
            fail(path, f"{text!r} is of trust domain {match.group(1)!r}, not the mesh's "
                       f"{trust_domain!r} (trustDomain): the mesh CA issues no such identity")
        return text

    return F.list_of(identity)

"""`meshctl authz SERVICE`: the AuthorizationPolicies of a service's sidecars and, per policy,
the requests it allowed and denied over the window (dry-run ones: would have) or, an AUDIT one,
marked for audit, plus those no policy decided; from the sidecars' ami_authz_decisions_total
series, as `linkerd viz authz`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from meshctl.api.annotations import is_dry_run
from meshctl.api.authz import AuthorizationPolicySpec
from meshctl.observe.golden import Rate
from meshctl.observe.samples import A_ACTION, A_DECISION, A_DRY_RUN, A_DST, A_POLICY

NONE = "[none]"  # proxy.authzstats.NONE: a decision no policy's rule made


@dataclass(frozen=True, slots=True)
class DeclaredPolicy:
    """An AuthorizationPolicy that applies to the service's sidecars, as the store holds it."""

    label: str  # `namespace/name`, its series' `policy` label
    action: str
    dry_run: bool

    def as_json(self) -> dict[str, object]:
        return {"policy": self.label, "action": self.action, "dryRun": self.dry_run}


def policies_about(resources: Iterable[Any], service: str, namespace: str,
                   gateway: bool = False) -> list[DeclaredPolicy]:
    """The stored policies of ``namespace`` selecting ``service`` or the whole namespace (what
    its sidecars enforce; a ``gateway`` service's: only those selecting it), by name."""
    selectors = (service,) if gateway else (None, service)
    found = [DeclaredPolicy(f"{r.namespace}/{r.name}", r.spec.action, is_dry_run(r.annotations))
             for r in resources if r.namespace == namespace
             and isinstance(r.spec, AuthorizationPolicySpec)
             and r.spec.service in selectors]
    return sorted(found, key=lambda d: d.label)


@dataclass
class AuthzRow:
    """One policy (or `[none]`), enforced or dry-run: its decisions over the window."""

    policy: str
    action: str  # "" for `[none]` allowing: no policy applied
    dry_run: bool
    allowed: float = 0.0
    denied: float = 0.0
    rps: float = 0.0
    audited: float = 0.0  # an AUDIT policy's: the requests (connections) it marked

    def as_json(self) -> dict[str, object]:
        return {"policy": self.policy, "action": self.action or None, "dryRun": self.dry_run,
                "allowed": round(self.allowed), "denied": round(self.denied),
                "audited": round(self.audited), "rps": round(self.rps, 3)}


def authz_rows(label: str, declared: Sequence[DeclaredPolicy],
               counts: Iterable[tuple[Rate, float]]) -> list[AuthzRow]:
    """A row per declared policy (idle ones too), per other policy with decisions for the
    service whose metrics name is ``label`` (one deleted or renamed within the window), then
    the `[none]` rows: requests no ALLOW policy admitted (enforced, and as the dry-run ALLOW
    policies would have it) or, with no ALLOW policy, that no policy decided."""
    rows: dict[tuple[str, str, bool], AuthzRow] = {
        (d.label, d.action, d.dry_run): AuthzRow(d.label, d.action, d.dry_run) for d in declared}
    # the enforced `[none]` row: the ALLOW policies' refusals, or the rest; only where an
    # ALLOW, DENY or AUDIT policy applies (a CUSTOM one alone: the sidecars count no decision)
    if any(d.action in ("ALLOW", "DENY", "AUDIT") for d in declared):
        action = "ALLOW" if any(d.action == "ALLOW" and not d.dry_run for d in declared) else ""
        rows[(NONE, action, False)] = AuthzRow(NONE, action, False)
    if any(d.action == "ALLOW" and d.dry_run for d in declared):
        rows[(NONE, "ALLOW", True)] = AuthzRow(NONE, "ALLOW", True)
    for rate, increase in counts:
        key = rate.key
        if key[A_DST] != label:
            continue
        dry = key[A_DRY_RUN] == "true"
        row = rows.get((key[A_POLICY], key[A_ACTION], dry))
        if row is None:
            row = rows[(key[A_POLICY], key[A_ACTION], dry)] = AuthzRow(
                key[A_POLICY], key[A_ACTION], dry)
        if key[A_DECISION] == "allow":
            row.allowed += increase
        elif key[A_DECISION] == "audited":
            row.audited += increase
        else:
            row.denied += increase
        row.rps += rate.rps
    return sorted(rows.values(), key=lambda r: (r.policy == NONE, r.policy, r.dry_run,
                                                r.action))


def authz_report(service: str, namespace: str, label: str, window: float,
                 declared: Sequence[DeclaredPolicy],
                 counts: Iterable[tuple[Rate, float]]) -> dict[str, object]:
    """The body of GET /api/v1/authz: the policies, the rows, and a message when no policy
    applies to the service (its requests are then all allowed by default)."""
    rows = authz_rows(label, declared, counts)
    message = None
    if not rows:
        message = (f"no AuthorizationPolicy applies to service {service} in namespace "
                   f"{namespace}: every caller the mTLS mode admits is allowed")
    return {"service": service, "namespace": namespace, "window": window,
            "policies": [d.as_json() for d in declared],
            "rows": [r.as_json() for r in rows], "message": message}

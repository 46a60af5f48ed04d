"""Which AuthorizationPolicy decided: per-policy counters (ami_authz_decisions_total) and the
dry-run policies' would-be decisions (Istio's `istio.io/dry-run`, Envoy's RBAC shadow rules).

Everything is settled when a snapshot is applied: `compile_policies` splits the policies into
enforced and dry-run ones and binds each to its counter (`Count`, one series: a policy and its
one outcome), shared across pushes through `AuthzTable`. A request then costs one increment
on the deciding policy's counter; a proxy without policies has no `Tally` and pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily

if TYPE_CHECKING:
    from meshctl.api.authz import AuthorizationPolicySpec, AuthorizationRule

AUTHZ_LABELS = ("destination_service", "policy", "action", "decision", "dry_run")
# The `policy` of a decision no policy's rule made: no ALLOW policy matched (action ALLOW,
# decision deny: Envoy's `rbac_access_denied_matched_policy[none]`), or no policy applied to
# the request at all (action "", decision allow).
NONE = "[none]"
Key = tuple[str, str, str, str, str]  # the values of AUTHZ_LABELS
# whether a rule matches the request (or connection) being judged, for an ALLOW or DENY policy
Matches = Callable[["AuthorizationRule", bool], bool]


class Count:
    """One series' value (a policy, its action, its one outcome, enforced or dry-run)."""

    __slots__ = ("n", "policy")

    def __init__(self, policy: str) -> None:
        self.n = 0
        self.policy = policy  # its `policy` label, for the access log


class AuthzTable:
    """Every series of this proxy's policies, kept across pushes (keyed by their labels)."""

    __slots__ = ("compiled", "counts")

    def __init__(self) -> None:
        self.counts: dict[Key, Count] = {}
        self.compiled: set[Key] = set()

    def begin(self) -> None:
        """A snapshot is about to be compiled: note afresh which series it has."""
        self.compiled = set()

    def count(self, key: Key) -> Count:
        """The series' counter for a new snapshot (at apply time, never per request)."""
        self.compiled.add(key)
        found = self.counts.get(key)
        if found is None:
            found = self.counts[key] = Count(key[1])
        return found

    def retire_unused(self) -> None:
        """The snapshot is in use: stop exporting the series of policies it no longer has
        (deleted, renamed, moved in or out of dry-run), as proxy.routemetrics does for rules."""
        for key in self.counts.keys() - self.compiled:
            del self.counts[key]

    def families(self) -> Iterator[CounterMetricFamily]:
        """ami_authz_decisions_total, every series of the policies in force (0s too, so a
        policy shows from its first push); nothing while no policy applies."""
        if not self.counts:
            return
        family = CounterMetricFamily(
            "ami_authz_decisions", "Requests and TCP connections decided, per "
            "AuthorizationPolicy (dry_run=\"true\": the decision a dry-run policy would have "
            "made).", labels=AUTHZ_LABELS)
        for key, count in sorted(self.counts.items()):
            family.add_metric(key, count.n)
        yield family


class Tally:
    """The enforced DENY and ALLOW policies, each with its counter, in the order they are
    judged, and ``unmatched``: `[none]` (no ALLOW policy matched, or, with no ALLOW policy,
    none applied)."""

    __slots__ = ("allow", "deny", "unmatched")

    def __init__(self, deny: list[tuple[AuthorizationPolicySpec, Count]],
                 allow: list[tuple[AuthorizationPolicySpec, Count]], unmatched: Count) -> None:
        self.deny = deny
        self.allow = allow
        self.unmatched = unmatched


class DryRun:
    """The dry-run policies, judged after the enforced DENY policies let a request through,
    as they would decide if enforced too (their annotation removed)."""

    __slots__ = ("allow", "deny", "unmatched")

    def __init__(self, deny: list[tuple[AuthorizationPolicySpec, Count]],
                 allow: list[tuple[AuthorizationPolicySpec, Count]],
                 unmatched: Count | None) -> None:
        self.deny = deny
        self.allow = allow
        self.unmatched = unmatched  # `[none]`: no ALLOW policy, enforced or dry-run, matched

    def judge(self, matches: Matches, admitted: bool, enforced_allow: bool) -> str | None:
        """Count the would-be decision; return it (`deny default/x`, `allow default/y`, `deny
        [none]`) when it differs from the enforced one (``admitted``), for the access log.
        The first dry-run DENY whose rule matches would refuse; else, when dry-run ALLOW
        policies exist, the first of them whose rule matches would admit, and with none
        matching, neither would an enforced ALLOW (``enforced_allow`` and ``admitted``) or
        the request would be refused for want of an ALLOW policy admitting it."""
        for policy, count in self.deny:
            if any(matches(r, True) for r in policy.rules):
                count.n += 1
                return f"deny {policy.name}" if admitted else None
        if self.unmatched is None:
            return None
        for policy, count in self.allow:
            if any(matches(r, False) for r in policy.rules):
                count.n += 1
                return None if admitted else f"allow {policy.name}"
        if admitted and enforced_allow:
            return None  # an enforced ALLOW admitted it: it would still
        self.unmatched.n += 1
        return f"deny {NONE}" if admitted else None


def compile_policies(policies: Sequence[AuthorizationPolicySpec], table: AuthzTable,
                     label: str) -> tuple[list[AuthorizationPolicySpec],
                                          list[AuthorizationPolicySpec],
                                          Tally | None, DryRun | None]:
    """The enforced DENY and ALLOW policies, their counters and the dry-run policies, for
    the service whose metrics name is ``label``; no Tally when no policy applies."""
    deny = [p for p in policies if p.action == "DENY" and not p.dry_run]
    allow = [p for p in policies if p.action == "ALLOW" and not p.dry_run]
    dry_deny = [p for p in policies if p.action == "DENY" and p.dry_run]
    dry_allow = [p for p in policies if p.action == "ALLOW" and p.dry_run]
    if not (deny or allow or dry_deny or dry_allow):
        return deny, allow, None, None

    def count(policy: str, action: str, decision: str, dry: bool) -> Count:
        return table.count((label, policy, action, decision, "true" if dry else "false"))

    unmatched = count(NONE, "ALLOW", "deny", False) if allow else count(NONE, "", "allow", False)
    tally = Tally([(p, count(p.name, "DENY", "deny", False)) for p in deny],
                  [(p, count(p.name, "ALLOW", "allow", False)) for p in allow], unmatched)
    dry = None
    if dry_deny or dry_allow:
        dry = DryRun([(p, count(p.name, "DENY", "deny", True)) for p in dry_deny],
                     [(p, count(p.name, "ALLOW", "allow", True)) for p in dry_allow],
                     count(NONE, "ALLOW", "deny", True) if dry_allow else None)
    return deny, allow, tally, dry


def log_fields(line: str, authz: tuple[str | None, str | None]) -> str:
    """An access log line (JSON object and newline) with the authorization fields it has:
    ``authz_policy``, the policy that refused it; ``authz_dry_run``, the dry-run policies'
    decision where it differs from the enforced one."""
    import json

    extra = "".join(f',"{key}":{json.dumps(value)}' for key, value
                    in zip(("authz_policy", "authz_dry_run"), authz, strict=True)
                    if value is not None)
    return line[:-2] + extra + "}\n" if extra else line

"""Which AuthorizationPolicy decided: per-policy counters (ami_authz_decisions_total), the
dry-run policies' would-be decisions (Istio's `istio.io/dry-run`, Envoy's RBAC shadow rules)
and the AUDIT policies' marks (Envoy's RBAC `LOG` action: an access log line, never a verdict).

Everything is settled when a snapshot is applied: `compile_policies` splits the policies into
enforced and dry-run ones and binds each to its counter (`Count`, one series: a policy and its
one outcome), shared across pushes through `AuthzTable`. A request then costs one increment
on the deciding policy's counter; a proxy without policies has no `Tally` and pays nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

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
AUDITED = "audited"  # the `decision` of an AUDIT policy's series: the requests it marked
# the access log's authorization fields, in the order of an `authz` tuple (Exchange.authz,
# TcpSession.authz): the refusing policy, the dry-run verdict, the auditing policy
LOG_FIELDS = ("authz_policy", "authz_dry_run", "audit_policy")
Noted = tuple[str | None, str | None, str | None]


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


class Audit:
    """The AUDIT policies, judged for every request the CUSTOM check let reach the policies,
    whatever DENY and ALLOW then decide: as Envoy's RBAC `LOG` engine, the first enforced one
    whose rule matches marks the request (its access log line is written even where the log
    is off, naming it) and counts it; the first dry-run one counts it, marking nothing."""

    __slots__ = ("dry", "enforced")

    def __init__(self, enforced: list[tuple[AuthorizationPolicySpec, Count]],
                 dry: list[tuple[AuthorizationPolicySpec, Count]]) -> None:
        self.enforced = enforced
        self.dry = dry

    def judge(self, matches: Matches) -> str | None:
        """Count the auditing policies; the enforced one's name, for the access log, or None.
        A rule is judged as a DENY rule is (an unknown value counts for a `not` list, a TCP
        connection without the HTTP-only fields): Istio widens an AUDIT policy as a DENY."""
        marked = None
        for policies in (self.enforced, self.dry):
            for policy, count in policies:
                if any(matches(r, True) for r in policy.rules):
                    count.n += 1
                    if policies is self.enforced:
                        marked = policy.name
                    break
        return marked


def noted(target: Any, slot: int, value: str) -> None:
    """Set one of the access log's authorization fields (LOG_FIELDS' ``slot``) of a request or
    a TCP session, keeping the others (called only where there is something to note)."""
    found: Noted = getattr(target, "authz", None) or (None, None, None)
    target.authz = (*found[:slot], value, *found[slot + 1:])


def audited(view: Any) -> bool:
    """Whether an AUDIT policy marked this request or connection (an access log filter's
    view: an Exchange, a FilterView)."""
    found = getattr(view, "authz", None)
    return found is not None and found[2] is not None


def with_audits(log_filter: Callable[[Any], bool] | None,
                log_on: bool) -> Callable[[Any], bool] | None:
    """The access log filter of a listener whose AUDIT policies mark requests: every marked
    one is written, whatever the log's switch (``log_on``) and its Telemetry filter say; the
    rest as they say."""
    if not log_on:
        return audited
    if log_filter is None:
        return None
    rest = log_filter
    return lambda view: audited(view) or rest(view)


def compile_policies(policies: Sequence[AuthorizationPolicySpec], table: AuthzTable,
                     label: str) -> tuple[list[AuthorizationPolicySpec],
                                          list[AuthorizationPolicySpec],
                                          Tally | None, DryRun | None, Audit | None]:
    """The enforced DENY and ALLOW policies, their counters, the dry-run policies and the
    AUDIT ones, for the service whose metrics name is ``label``; no Tally when no policy
    applies, no Audit without an AUDIT policy (a request then pays nothing for it)."""
    deny = [p for p in policies if p.action == "DENY" and not p.dry_run]
    allow = [p for p in policies if p.action == "ALLOW" and not p.dry_run]
    dry_deny = [p for p in policies if p.action == "DENY" and p.dry_run]
    dry_allow = [p for p in policies if p.action == "ALLOW" and p.dry_run]
    audits = sorted((p for p in policies if p.action == "AUDIT"), key=lambda p: p.name)
    if not (deny or allow or dry_deny or dry_allow or audits):
        return deny, allow, None, None, None

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
    audit = None
    if audits:
        audit = Audit([(p, count(p.name, "AUDIT", AUDITED, False))
                       for p in audits if not p.dry_run],
                      [(p, count(p.name, "AUDIT", AUDITED, True)) for p in audits if p.dry_run])
    return deny, allow, tally, dry, audit


def log_fields(line: str, authz: Noted) -> str:
    """An access log line (JSON object and newline) with the authorization fields it has:
    ``authz_policy``, the policy that refused it; ``authz_dry_run``, the dry-run policies'
    decision where it differs from the enforced one; ``audit_policy``, the AUDIT policy that
    marked it."""
    import json

    extra = "".join(f',"{key}":{json.dumps(value)}' for key, value
                    in zip(LOG_FIELDS, authz, strict=True) if value is not None)
    return line[:-2] + extra + "}\n" if extra else line

"""AuthorizationPolicy action AUDIT through real static-mode sidecars (PERMISSIVE, so plaintext
callers reach the policies): a request an AUDIT policy matches gets an access log line naming
it, even with the access log off, and is counted (`decision="audited"`); AUDIT never changes
what DENY and ALLOW decide.

`reviews` has the access log off, an AUDIT of `/admin/*` and `/closed/*`, a dry-run AUDIT of
`/beta/*`, a DENY of `x-user: mallory` and an ALLOW of `/open/*`, `/admin/*`, `/beta/*`.
`ratings` has the access log on under a Telemetry filter writing only errors, and an AUDIT of
`/admin/*` alone (no other policy).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from meshctl.api.authz import parse_authorization
from meshctl.api.errors import ValidationError
from proxy.config import ConfigError, Snapshot
from tests.proxyharness import free_port
from tests.test_authz_dryrun import Sidecar as DryRunSidecar
from tests.test_mtls_static import mesh_ca, mint, start_proxy

REVIEWS = [
    {"name": "default/audit-admin", "action": "AUDIT",
     "rules": [{"to": [{"paths": ["/admin/*", "/closed/*"]}]}]},
    {"name": "default/audit-beta", "action": "AUDIT", "dryRun": True,
     "rules": [{"to": [{"paths": ["/beta/*"]}]}]},
    {"name": "default/deny-mallory", "action": "DENY",
     "rules": [{"when": [{"header": "x-user", "values": ["mallory"]}]}]},
    {"name": "default/allow-open", "action": "ALLOW",
     "rules": [{"to": [{"paths": ["/open/*", "/admin/*", "/beta/*"]}]}]},
]
RATINGS = [{"name": "default/audit-admin", "action": "AUDIT",
            "rules": [{"to": [{"paths": ["/admin/*"]}]}]}]


class Sidecar(DryRunSidecar):
    """The dry-run tests' sidecar, and every access log line it wrote, by path."""

    def lines(self) -> dict[str, dict[str, Any]]:
        """The access log lines written so far, by path."""
        return {line["path"]: line for line in (json.loads(x) for x in
                                                self.proxy.stdout().splitlines()
                                                if x.startswith("{"))}


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[dict[str, Sidecar]]:
    tmp = tmp_path_factory.mktemp("authzaudit")
    ca = mesh_ca(tmp / "ca")
    started: dict[str, Sidecar] = {}
    try:
        for service, policies, log in (("reviews", REVIEWS, {"accessLog": False}),
                                       ("ratings", RATINGS, {"accessLog": True})):
            port = free_port()
            snap: dict[str, Any] = {
                "node": {"service": service}, "app": f"127.0.0.1:{echo}",
                "mesh": {"mtls": "PERMISSIVE", **log},
                "inbound": {"authorization": policies}}
            if service == "ratings":
                snap["telemetry"] = {"accessLog": {"filter": "response.code >= 400"}}
            proxy = start_proxy(tmp / service, mint(ca, service), snap, inbound=port)
            started[service] = Sidecar(proxy, port, service)
        yield started
    finally:
        for s in started.values():
            s.proxy.stop()


def series(policy: str, action: str, decision: str, dry_run: bool = False) -> dict[str, str]:
    return {"policy": policy, "action": action, "decision": decision,
            "dry_run": "true" if dry_run else "false"}


AUDIT_ADMIN = series("default/audit-admin", "AUDIT", "audited")
AUDIT_BETA = series("default/audit-beta", "AUDIT", "audited", dry_run=True)
ALLOW_OPEN = series("default/allow-open", "ALLOW", "allow")


async def test_an_audited_request_is_logged_with_the_log_off_and_counted(
        sidecars: dict[str, Sidecar]) -> None:
    """With the access log off, a request the AUDIT policy matches gets a line naming it and
    is counted under it; the ALLOW still admits it and counts it; a request no AUDIT policy
    matches writes no line (sent first: the log keeps the order)."""
    s = sidecars["reviews"]
    audited, allowed = s.decisions(**AUDIT_ADMIN), s.decisions(**ALLOW_OPEN)
    assert await s.status("/open/quiet-1") == 200
    assert await s.status("/admin/a-1") == 200
    line = s.logged("/admin/a-1")
    assert (line["status"], line["audit_policy"]) == (200, "default/audit-admin")
    assert "authz_policy" not in line
    assert "/open/quiet-1" not in s.lines()
    assert s.decisions(**AUDIT_ADMIN) == audited + 1
    assert s.decisions(**ALLOW_OPEN) == allowed + 2


async def test_audit_decides_nothing_refused_requests_are_audited_too(
        sidecars: dict[str, Sidecar]) -> None:
    """An audited request the DENY refuses is refused (403), and one no ALLOW admits too;
    both lines name the refusing policy and the auditing one."""
    s = sidecars["reviews"]
    audited = s.decisions(**AUDIT_ADMIN)
    assert await s.status("/admin/m-1", "x-user: mallory\r\n") == 403
    assert await s.status("/closed/c-1") == 403
    mallory, closed = s.logged("/admin/m-1"), s.logged("/closed/c-1")
    assert (mallory["authz_policy"], mallory["audit_policy"]) == ("default/deny-mallory",
                                                                  "default/audit-admin")
    assert (closed["authz_policy"], closed["audit_policy"]) == ("[none]",
                                                                "default/audit-admin")
    assert s.decisions(**AUDIT_ADMIN) == audited + 2


async def test_a_dry_run_audit_policy_is_counted_and_writes_nothing(
        sidecars: dict[str, Sidecar]) -> None:
    """The dry-run AUDIT counts what it would audit (dry_run="true") but marks nothing: no
    line while the log is off (a marked request sent after it shows the log was written)."""
    s = sidecars["reviews"]
    would = s.decisions(**AUDIT_BETA)
    assert await s.status("/beta/b-1") == 200
    assert await s.status("/admin/after-beta") == 200
    s.logged("/admin/after-beta")
    assert "/beta/b-1" not in s.lines()
    assert s.decisions(**AUDIT_BETA) == would + 1


async def test_an_audited_request_passes_the_access_log_filter(
        sidecars: dict[str, Sidecar]) -> None:
    """The log on under a filter writing only errors: an audited 200 is written all the same,
    named; an unaudited 200 is filtered out as before, an unaudited 404 written without the
    field. With an AUDIT policy alone, nothing is refused and `[none]` counts the allowed."""
    s = sidecars["ratings"]
    none = s.decisions(**series("[none]", "", "allow"))
    assert await s.status("/plain/p-1") == 200
    assert await s.status("/admin/r-1") == 200
    assert await s.status("/status/404") == 404
    assert s.logged("/admin/r-1")["audit_policy"] == "default/audit-admin"
    assert "audit_policy" not in s.logged("/status/404")
    assert "/plain/p-1" not in s.lines()
    assert s.decisions(**series("[none]", "", "allow")) == none + 3


def test_audit_is_parsed_and_a_provider_is_refused_with_its_path() -> None:
    """AUDIT is an action; a provider is CUSTOM's alone (the error names the field)."""
    spec = parse_authorization({"action": "AUDIT", "rules": [{"to": [{"paths": ["/x"]}]}]},
                               "spec")
    assert spec.action == "AUDIT"
    with pytest.raises(ValidationError, match=r"spec\.provider: only action CUSTOM takes a "
                                              r"provider, not AUDIT"):
        parse_authorization({"action": "AUDIT", "provider": {"name": "ext"}}, "spec")
    with pytest.raises(ValidationError, match=r"spec\.action: .*AUDIT"):
        parse_authorization({"action": "LOG"}, "spec")


def test_a_static_dry_run_audit_policy_loads() -> None:
    """`dryRun: true` on an AUDIT policy of a static file is accepted (as Istio accepts the
    annotation on one), CUSTOM's still refused."""
    snap = Snapshot.from_dict({"inbound": {"authorization": [
        {"name": "default/a", "dryRun": True, "action": "AUDIT", "rules": [{}]}]}})
    assert [(p.action, p.dry_run) for p in snap.authorization] == [("AUDIT", True)]
    with pytest.raises(ConfigError, match=r"inbound\.authorization\[0\]\.dryRun"):
        Snapshot.from_dict({"inbound": {"authorization": [
            {"dryRun": True, "action": "CUSTOM", "provider": {"name": "p"}}]}})

"""AuthorizationPolicy dry-run (Istio's `istio.io/dry-run`) and the per-policy decision counters,
through real static-mode sidecars (PERMISSIVE, so plaintext callers reach the policies) with the
access log on.

`reviews` enforces a DENY (`x-user: mallory`) and an ALLOW (`/open/*`, `/admin/*`) beside a
dry-run DENY (`/admin/*`) and a dry-run ALLOW (`/beta/*`); `ratings` has dry-run policies only
(an ALLOW of `/ok/*`), so it enforces nothing at all.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.helpers_mesh import wait_for
from tests.proxyharness import ProxyProcess, free_port, get, metric_value, roundtrip
from tests.test_mtls_static import mesh_ca, mint, start_proxy

REVIEWS = [
    {"name": "default/deny-mallory", "action": "DENY",
     "rules": [{"when": [{"header": "x-user", "values": ["mallory"]}]}]},
    {"name": "default/deny-admin", "dryRun": True, "action": "DENY",
     "rules": [{"to": [{"paths": ["/admin/*"]}]}]},
    {"name": "default/allow-open", "action": "ALLOW",
     "rules": [{"to": [{"paths": ["/open/*", "/admin/*"]}]}]},
    {"name": "default/allow-beta", "dryRun": True, "action": "ALLOW",
     "rules": [{"to": [{"paths": ["/beta/*"]}]}]},
]
RATINGS = [{"name": "default/allow-ok", "dryRun": True, "action": "ALLOW",
            "rules": [{"to": [{"paths": ["/ok/*"]}]}]}]


@dataclass
class Sidecar:
    proxy: ProxyProcess
    port: int
    service: str

    async def status(self, path: str, extra: str = "") -> int:
        return (await roundtrip(self.port, get(self.service, path, extra=extra))).status

    def decisions(self, **labels: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.proxy.admin}/metrics",
                                    timeout=5) as resp:
            text = resp.read().decode()
        return metric_value(text, "ami_authz_decisions_total", destination_service=self.service,
                            **labels)

    def logged(self, path: str) -> dict[str, Any]:
        """The access log line of the one request to ``path`` (written in batches: waited)."""
        def line() -> dict[str, Any] | None:
            found = [json.loads(x) for x in self.proxy.stdout().splitlines()
                     if x.startswith("{") and json.loads(x)["path"] == path]
            return found[0] if found else None
        return wait_for(line, 10, f"the access log line of {path}", interval=0.05)


@pytest.fixture(scope="module")
def sidecars(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[dict[str, Sidecar]]:
    tmp = tmp_path_factory.mktemp("authzdry")
    ca = mesh_ca(tmp / "ca")
    started: dict[str, Sidecar] = {}
    try:
        for service, policies in (("reviews", REVIEWS), ("ratings", RATINGS)):
            port = free_port()
            proxy = start_proxy(tmp / service, mint(ca, service), {
                "node": {"service": service}, "app": f"127.0.0.1:{echo}",
                "mesh": {"mtls": "PERMISSIVE", "accessLog": True},
                "inbound": {"authorization": policies}}, inbound=port)
            started[service] = Sidecar(proxy, port, service)
        yield started
    finally:
        for s in started.values():
            s.proxy.stop()


def series(policy: str, action: str, decision: str, dry_run: bool) -> dict[str, str]:
    return {"policy": policy, "action": action, "decision": decision,
            "dry_run": "true" if dry_run else "false"}


DENY_ADMIN = series("default/deny-admin", "DENY", "deny", True)
ALLOW_OPEN = series("default/allow-open", "ALLOW", "allow", False)
ALLOW_BETA = series("default/allow-beta", "ALLOW", "allow", True)
DENY_MALLORY = series("default/deny-mallory", "DENY", "deny", False)
NO_ALLOW = series("[none]", "ALLOW", "deny", False)
NO_ALLOW_DRY = series("[none]", "ALLOW", "deny", True)


async def test_a_matching_dry_run_deny_lets_the_request_through_and_counts_it(
        sidecars: dict[str, Sidecar]) -> None:
    """`/admin/*` matches the dry-run DENY: the request reaches the app (the enforced ALLOW
    admits it and counts it), the dry-run DENY counts a would-be denial, and the access log
    line says what enforcing it would have done."""
    s = sidecars["reviews"]
    before = {name: s.decisions(**labels) for name, labels in
              (("admin", DENY_ADMIN), ("open", ALLOW_OPEN))}
    assert await s.status("/admin/dry-1") == 200
    assert s.decisions(**DENY_ADMIN) == before["admin"] + 1
    assert s.decisions(**ALLOW_OPEN) == before["open"] + 1
    line = s.logged("/admin/dry-1")
    assert line["status"] == 200 and line["authz_dry_run"] == "deny default/deny-admin"
    assert "authz_policy" not in line  # nothing refused it
    # a request the dry-run policies would decide as the enforced ones do has no dry-run field
    assert await s.status("/open/plain-1") == 200
    assert "authz_dry_run" not in s.logged("/open/plain-1")


async def test_enforced_decisions_are_counted_per_policy_and_logged_when_refused(
        sidecars: dict[str, Sidecar]) -> None:
    """The DENY policy whose rule matched is counted and named on the refused request's log
    line; a request no ALLOW policy admits is counted under `[none]` (action ALLOW) and logged
    so; a request an ALLOW admits is counted under that ALLOW."""
    s = sidecars["reviews"]
    mallory, unmatched = s.decisions(**DENY_MALLORY), s.decisions(**NO_ALLOW)
    assert await s.status("/open/m-1", "x-user: mallory\r\n") == 403
    assert s.decisions(**DENY_MALLORY) == mallory + 1
    assert s.logged("/open/m-1")["authz_policy"] == "default/deny-mallory"
    assert await s.status("/closed/c-1") == 403
    assert s.decisions(**NO_ALLOW) == unmatched + 1
    line = s.logged("/closed/c-1")
    assert (line["reason"], line["authz_policy"]) == ("not_authorized", "[none]")
    # nothing dry-run would admit it either: the same decision, no dry-run field
    assert "authz_dry_run" not in line


async def test_a_dry_run_allow_beside_enforced_policies(sidecars: dict[str, Sidecar]) -> None:
    """`/beta/*` is admitted by the dry-run ALLOW only: the request is refused as today (no
    enforced ALLOW matches), the dry-run ALLOW counts a would-be admission, and the log line
    has both the refusing `[none]` and the would-be `allow default/allow-beta`. A request no
    ALLOW policy, enforced or dry-run, admits counts under the dry-run `[none]`; one the
    enforced ALLOW admits does not (enforcing allow-beta would not refuse it)."""
    s = sidecars["reviews"]
    beta, none_dry = s.decisions(**ALLOW_BETA), s.decisions(**NO_ALLOW_DRY)
    assert await s.status("/beta/b-1") == 403
    assert s.decisions(**ALLOW_BETA) == beta + 1
    line = s.logged("/beta/b-1")
    assert (line["authz_policy"], line["authz_dry_run"]) == ("[none]",
                                                             "allow default/allow-beta")
    assert await s.status("/elsewhere/e-1") == 403
    assert s.decisions(**NO_ALLOW_DRY) == none_dry + 1
    assert await s.status("/open/o-2") == 200
    assert s.decisions(**NO_ALLOW_DRY) == none_dry + 1
    assert s.decisions(**ALLOW_BETA) == beta + 1


async def test_only_dry_run_policies_enforce_nothing(sidecars: dict[str, Sidecar]) -> None:
    """With dry-run policies only, every request is allowed, counted as decided by no policy
    (`[none]`, no action); the dry-run ALLOW counts what it would admit, and what it would
    refuse is counted under the dry-run `[none]` and logged as `deny [none]`."""
    s = sidecars["ratings"]
    default = series("[none]", "", "allow", False)
    ok, none_dry, allowed = (s.decisions(**series("default/allow-ok", "ALLOW", "allow", True)),
                             s.decisions(**NO_ALLOW_DRY), s.decisions(**default))
    assert await s.status("/ok/1") == 200
    assert await s.status("/nope/1") == 200
    assert s.decisions(**series("default/allow-ok", "ALLOW", "allow", True)) == ok + 1
    assert s.decisions(**NO_ALLOW_DRY) == none_dry + 1
    assert s.decisions(**default) == allowed + 2
    assert s.logged("/nope/1")["authz_dry_run"] == "deny [none]"
    assert "authz_dry_run" not in s.logged("/ok/1")
    # no enforced policy: no enforced series but `[none]`'s
    assert s.decisions(dry_run="false") == s.decisions(**default)

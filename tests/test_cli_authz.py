"""`meshctl authz` against a real mesh: `meshctl serve`, control-plane-mode sidecars (reviews,
productpage calling it) and real HTTP through them, with AuthorizationPolicies applied as
resources (one of them `istio.io/dry-run`). The rows per policy with the requests each allowed
and denied (the dry-run one: would have denied), and `[none]`, in JSON and table form; the
message for a service without policy; an unknown service; `describe service` marking the
dry-run policy."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import meshbuilder
from tests.helpers_mesh import wait_for
from tests.resources import documents, mesh_config

pytestmark = pytest.mark.timeout(180)


def policy(name: str, action: str, rule: dict[str, Any], dry_run: bool = False) -> str:
    metadata: dict[str, Any] = {"name": name}
    if dry_run:
        metadata["annotations"] = {"istio.io/dry-run": "true"}
    return yaml.safe_dump({"apiVersion": "ami.mesh/v1alpha1", "kind": "AuthorizationPolicy",
                           "metadata": metadata,
                           "spec": {"selector": {"service": "reviews"}, "action": action,
                                    "rules": [rule]}})


POLICIES = documents(
    policy("reviews-allow", "ALLOW", {"to": [{"paths": ["/api/*", "/admin/*"]}]}),
    policy("deny-mallory", "DENY", {"when": [{"header": "x-user", "values": ["mallory"]}]}),
    policy("deny-admin", "DENY", {"to": [{"paths": ["/admin/*"]}]}, dry_run=True))


class Mesh(meshbuilder.Mesh):
    """reviews behind its sidecar, productpage's sidecar calling it, mTLS off."""

    def build(self) -> Mesh:
        self.control_plane(mesh_config(mtls="DISABLE"), warmup=0.0)
        self.service("reviews", "v1")
        # ratings lives in namespace shop only: its bare name is its metrics name
        self.service("ratings", "v1", namespace="shop")
        self.front = self.sidecar("productpage")
        return self

    def status(self, path: str, user: str | None = None) -> int:
        return self.get(self.front, "reviews", path,
                        headers={"x-user": user} if user else None)[0]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(Path(tmp_path_factory.mktemp("cliauthz"))) as mesh:
        mesh.build().wait_synced(20)
        mesh.apply_synced(POLICIES)
        yield mesh


def _body(mesh: Mesh, service: str = "reviews") -> dict[str, Any]:
    out = mesh.meshctl("authz", service, "--window", "5m", "-o", "json")
    assert out.returncode == 0, out.stderr
    body: dict[str, Any] = json.loads(out.stdout)
    return body


def test_requests_allowed_and_denied_per_policy(mesh: Mesh) -> None:
    """Three API calls (allowed by reviews-allow), two admin calls (allowed by it too, and
    would have been denied by the dry-run deny-admin: they still reach the app), mallory's
    call (denied by deny-mallory) and one no ALLOW admits (denied, `[none]`): each policy's
    row counts its own, and the table shows the same."""
    assert [mesh.status("/api/1") for _ in range(3)] == [200] * 3
    assert [mesh.status("/admin/1") for _ in range(2)] == [200] * 2
    assert mesh.status("/api/2", user="mallory") == 403
    assert mesh.status("/other") == 403
    expected = [
        {"policy": "default/deny-admin", "action": "DENY", "dryRun": True,
         "allowed": 0, "denied": 2},
        {"policy": "default/deny-mallory", "action": "DENY", "dryRun": False,
         "allowed": 0, "denied": 1},
        {"policy": "default/reviews-allow", "action": "ALLOW", "dryRun": False,
         "allowed": 5, "denied": 0},
        {"policy": "[none]", "action": "ALLOW", "dryRun": False, "allowed": 0, "denied": 1},
    ]

    def counted() -> dict[str, Any] | None:
        body = _body(mesh)
        rows = [{k: r[k] for k in ("policy", "action", "dryRun", "allowed", "denied")}
                for r in body["rows"]]
        return body if rows == expected else None

    body = wait_for(counted, 60, "every decision in meshctl authz", interval=0.5)
    assert (body["service"], body["namespace"], body["message"]) == ("reviews", "default",
                                                                     None)
    assert body["window"] == 300
    assert body["policies"] == [
        {"policy": "default/deny-admin", "action": "DENY", "dryRun": True},
        {"policy": "default/deny-mallory", "action": "DENY", "dryRun": False},
        {"policy": "default/reviews-allow", "action": "ALLOW", "dryRun": False}]
    assert all(r["rps"] > 0 for r in body["rows"])

    table = mesh.meshctl("authz", "reviews", "--window", "5m")
    assert table.returncode == 0, table.stderr
    head, *lines = table.stdout.strip().splitlines()
    assert head.split() == ["POLICY", "ACTION", "DRY-RUN", "ALLOWED", "DENIED", "RPS"]
    assert [line.split()[:5] for line in lines] == [
        ["default/deny-admin", "DENY", "yes", "-", "2"],
        ["default/deny-mallory", "DENY", "no", "-", "1"],
        ["default/reviews-allow", "ALLOW", "no", "5", "-"],
        ["[none]", "ALLOW", "no", "-", "1"]]


def test_describe_service_marks_the_dry_run_policy(mesh: Mesh) -> None:
    """`describe service` lists the policies that apply, the dry-run one as such."""
    out = mesh.meshctl("describe", "service", "reviews")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line.split() for line in out.stdout.splitlines()
            if line.strip().startswith(("deny-", "reviews-allow"))}
    assert rows["deny-admin"][2:4] == ["DENY", "(dry-run)"]
    assert rows["deny-mallory"][2:4] == ["DENY", "1"]


def test_a_service_without_policy_and_an_unknown_service(mesh: Mesh) -> None:
    """productpage has no policy: said so (exit 0; the JSON has the message and no row); a
    service the mesh does not know is an error."""
    out = mesh.meshctl("authz", "productpage")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("no AuthorizationPolicy applies to service productpage in "
                                  "namespace default: every caller the mTLS mode admits is "
                                  "allowed")
    body = _body(mesh, "productpage")
    assert body["rows"] == [] and body["policies"] == [] and body["message"]
    missing = mesh.meshctl("authz", "nosuch")
    assert missing.returncode == 1
    assert missing.stderr.startswith("error: no service nosuch in namespace default ("), \
        missing.stderr
    # a typo gets the close names, as `stat` and `describe svc` give them
    typo = mesh.meshctl("authz", "reviw")
    assert typo.returncode == 1 and typo.stderr.endswith("; did you mean default/reviews?\n"), \
        typo.stderr


def test_a_custom_policy_alone_shows_no_none_row() -> None:
    """A sidecar with only a CUSTOM policy counts no decision (its provider's answers are
    ami_ext_authz_checks_total): the report has the policy's row but no `[none]` one, which
    would read `0` allowed however many requests its sidecars let through."""
    from meshctl.api.resources import parse_document
    from meshctl.observe.authzreport import authz_report, policies_about

    custom = parse_document({
        "apiVersion": "ami.mesh/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "ext"},
        "spec": {"selector": {"service": "reviews"}, "action": "CUSTOM",
                 "provider": {"name": "authz"}, "rules": [{"to": [{"paths": ["/x"]}]}]}})
    declared = policies_about([custom], "reviews", "default")
    body = authz_report("reviews", "default", "reviews", 30.0, declared, [])
    assert [(r["policy"], r["action"]) for r in body["rows"]] == [("default/ext", "CUSTOM")]


SHOP_ALLOW = yaml.safe_dump({
    "apiVersion": "ami.mesh/v1alpha1", "kind": "AuthorizationPolicy",
    "metadata": {"name": "ratings-allow", "namespace": "shop"},
    "spec": {"selector": {"service": "ratings"}, "action": "ALLOW", "rules": [{}]}})


def test_a_service_of_another_namespace_is_not_this_namespaces(mesh: Mesh) -> None:
    """ratings runs in namespace shop only, so its decisions carry the bare name `ratings`:
    `meshctl authz ratings -n shop` shows them, `meshctl authz ratings` (namespace default,
    where no ratings runs) is the unknown-service error, not shop's rows under default's name."""
    mesh.apply_synced(SHOP_ALLOW)
    assert mesh.get(mesh.front, "ratings.shop", "/r")[0] == 200

    def counted() -> dict[str, Any] | None:
        out = mesh.meshctl("authz", "ratings", "-n", "shop", "--window", "5m", "-o", "json")
        assert out.returncode == 0, out.stderr
        body: dict[str, Any] = json.loads(out.stdout)
        rows = {r["policy"]: r["allowed"] for r in body["rows"]}
        return body if rows.get("shop/ratings-allow") == 1 else None

    wait_for(counted, 60, "ratings' decision in namespace shop", interval=0.5)
    other = mesh.meshctl("authz", "ratings", "--window", "5m", "-o", "json")
    assert other.returncode == 1, other.stdout
    assert other.stderr.startswith("error: no service ratings in namespace default ("), \
        other.stderr
    assert other.stderr.endswith("; did you mean shop/ratings?\n"), other.stderr


def test_get_and_describe_show_that_a_policy_is_dry_run(mesh: Mesh) -> None:
    """`meshctl get authorizationpolicies` and `meshctl describe authorizationpolicy` of the
    dry-run deny-admin say it is dry-run (its annotation, which is what makes it enforce
    nothing); the enforced deny-mallory's row is the bare action."""
    listed = mesh.meshctl("get", "authorizationpolicies")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines()[1:]}
    assert "DENY (dry-run)" in rows["deny-admin"], listed.stdout
    assert "dry-run" not in rows["deny-mallory"], listed.stdout
    described = mesh.meshctl("describe", "authorizationpolicy", "deny-admin")
    assert described.returncode == 0, described.stderr
    assert "Annotations:       istio.io/dry-run=true" in described.stdout, described.stdout

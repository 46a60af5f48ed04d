"""Sidecar scoping with real parts: a control plane, sidecars and apps (mTLS on) in namespaces
a and b, an `api` and a caller `web` in each. With a's Sidecar `egress: ["./*"]`, a's callers
get `404 no_route` for b's services (reachable without it), and `meshctl check` names the
calls they made outside the scope; a change to b's Routes pushes nothing to a's scoped
sidecars (their versions stay) while a change in a does; `meshctl check` warns of a Sidecar
selecting nothing and of a Route sending outside a scope; an invalid Sidecar is refused by
`apply` and `validate` with its field path."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers_mesh import apply_yaml, http_json, proxies, wait_for
from tests.helpers_mesh import meshctl as run_meshctl
from tests.meshbuilder import Mesh

pytestmark = pytest.mark.timeout(240)

SCOPE_A = """\
apiVersion: ami.mesh/v1alpha1
kind: Sidecar
metadata: {name: default, namespace: a}
spec:
  egress: [{hosts: ["./*"]}]
"""


def teapot_route(ns: str, status: int) -> str:
    return f"""\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {{name: api, namespace: {ns}}}
spec:
  host: api
  rules:
    - matches: [{{headers: {{x-teapot: {{exact: "1"}}}}}}]
      fault: {{abort: {{httpStatus: {status}, percent: 100}}}}
      backends: [{{}}]
    - backends: [{{}}]
"""


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with Mesh(tmp_path_factory.mktemp("sidecar-scope")) as mesh:
        mesh.control_plane(warmup=0.0)
        outside = mesh.backend("outside")  # a host outside the mesh, on this machine
        names: dict[str, str] = {}
        outbound: dict[str, str] = {}
        for ns in ("a", "b"):
            app = mesh.backend(f"{ns}-api")  # answers with its namespace
            api = mesh.sidecar("api", namespace=ns, app=app.info["address"])
            web = mesh.sidecar("web", namespace=ns)
            names[f"api-{ns}"], names[f"web-{ns}"] = api.info["name"], web.info["name"]
            outbound[ns] = f"http://{web.info['outbound']}/"
        mesh.wait_synced()
        yield {"cp": mesh.cp, "names": names, "outbound": outbound,
               "outside": outside.info["address"].replace("127.0.0.1", "localhost")}


def call(outbound: str, host: str, **headers: str) -> tuple[int, str, bytes]:
    """(status, x-ami-reason, body) of a GET through a caller's sidecar."""
    req = urllib.request.Request(outbound, headers={"Host": host, **headers})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers.get("x-ami-reason", ""), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("x-ami-reason", ""), exc.read()


def meshctl(mesh: dict[str, Any], *argv: str) -> subprocess.CompletedProcess[str]:
    return run_meshctl(mesh["cp"], *argv)


def apply_synced(mesh: dict[str, Any], text: str) -> None:
    """Apply and wait until every proxy runs a config including it."""
    sync(mesh, apply_yaml(mesh["cp"], text))


def sync(mesh: dict[str, Any], revision: int) -> None:
    status, body = http_json(f"{mesh['cp'].info['api']}/api/v1/sync?storeVersion={revision}"
                             "&timeout=30", timeout=40.0)
    assert status == 200 and body["synced"], body


def delete(mesh: dict[str, Any], kind: str, name: str, ns: str) -> None:
    done = meshctl(mesh, "delete", kind, name, "-n", ns)
    assert done.returncode == 0, done.stderr
    sync(mesh, http_json(f"{mesh['cp'].info['api']}/api/v1/proxies")[1]["storeVersion"])


def versions(mesh: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """(configVersion, sentVersion) of each proxy, by its role (`web-a` ...)."""
    listed = {p["name"]: p for p in proxies(mesh["cp"])}
    return {role: (listed[n]["configVersion"], listed[n]["sentVersion"])
            for role, n in mesh["names"].items()}


def test_a_scoped_sidecar_gets_no_route_for_the_other_namespace(mesh: dict[str, Any]) -> None:
    out = mesh["outbound"]
    wait_for(lambda: call(out["a"], "api.b")[0] == 200, 20, "api.b reachable from a")
    assert call(out["a"], "api.b")[2] == b"b-api"  # without a Sidecar: reachable
    apply_synced(mesh, SCOPE_A)
    try:
        assert call(out["a"], "api.b")[:2] == (404, "no_route")
        assert call(out["a"], "api.b.svc.cluster.local")[:2] == (404, "no_route")
        assert call(out["a"], "api") == (200, "", b"a-api")  # its own namespace: in scope
        assert call(out["b"], "api.a")[2] == b"a-api"  # b has no Sidecar: sees everything
        shown = meshctl(mesh, "proxy-config", mesh["names"]["web-a"])
        assert shown.returncode == 0, shown.stderr
        assert "Scope:           Sidecar a/default · egress ./*" in shown.stdout
        assert "In scope:        2 services: api, web" in shown.stdout
        other = meshctl(mesh, "proxy-config", mesh["names"]["web-b"]).stdout
        assert "Scope:           the whole mesh (no Sidecar applies)" in other
        listed = meshctl(mesh, "get", "sc", "-n", "a").stdout.splitlines()
        assert listed[0].split()[:4] == ["NAME", "SELECTOR", "EGRESS", "OUTBOUND"]
        assert listed[1].split()[:4] == ["default", "<namespace>", "./*", "(mesh)"]
        described = meshctl(mesh, "describe", "sidecar", "default", "-n", "a")
        assert "Kind:              Sidecar" in described.stdout, described.stderr

        def warned() -> str | None:  # once the control plane has scraped web-a's metrics
            text = meshctl(mesh, "check").stdout
            return text if "Service web of a (Sidecar a/default)" in text else None
        line = next(x for x in wait_for(warned, 30, "check warns of the calls").splitlines()
                    if "Service web of a" in x)
        assert ("called hosts outside the Sidecar's egress hosts (404 no_route): api.b (1 "
                "requests), api.b.svc.cluster.local (1 requests)") in line
    finally:
        delete(mesh, "sidecar", "default", "a")
    assert call(out["a"], "api.b")[2] == b"b-api"  # scope gone: reachable again


def test_a_sidecars_outbound_traffic_policy_applies_to_the_sidecars_it_selects(
        mesh: dict[str, Any]) -> None:
    """The mesh is REGISTRY_ONLY; a's Sidecar says ALLOW_ANY: a's callers reach an outside
    host directly, b's still get 404 no_route for it."""
    out, outside = mesh["outbound"], mesh["outside"]
    assert call(out["a"], outside)[:2] == (404, "no_route")
    apply_synced(mesh, SCOPE_A + "  outboundTrafficPolicy: {mode: ALLOW_ANY}\n")
    try:
        assert call(out["a"], outside) == (200, "", b"outside")
        assert call(out["b"], outside)[:2] == (404, "no_route")
        assert call(out["a"], "api.b.svc.cluster.local")[:2] == (404, "no_route")  # (a .svc
        # name of no service it knows never leaves the mesh, as under ALLOW_ANY without scope)
    finally:
        delete(mesh, "sidecar", "default", "a")


def test_a_change_outside_the_scope_is_not_pushed_to_scoped_sidecars(
        mesh: dict[str, Any]) -> None:
    out = mesh["outbound"]
    apply_synced(mesh, SCOPE_A)
    try:
        before = versions(mesh)
        apply_synced(mesh, teapot_route("b", 418))
        after = versions(mesh)
        assert call(out["b"], "api", **{"x-teapot": "1"})[0] == 418  # b's callers have it
        assert after["web-b"] != before["web-b"]
        assert after["web-a"] == before["web-a"]  # a's scoped sidecars: nothing pushed
        assert after["api-a"] == before["api-a"]
        # A change inside the scope is pushed to them.
        apply_synced(mesh, teapot_route("a", 419))
        assert versions(mesh)["web-a"] != after["web-a"]
        assert call(out["a"], "api", **{"x-teapot": "1"})[0] == 419
    finally:
        for ns in ("a", "b"):
            meshctl(mesh, "delete", "route", "api", "-n", ns)
        delete(mesh, "sidecar", "default", "a")


def test_check_warns_of_a_sidecar_selecting_nothing_and_a_route_leaving_a_scope(
        mesh: dict[str, Any], tmp_path: Path) -> None:
    nothing = SCOPE_A.replace("name: default", "name: typo").replace(
        "spec:\n", "spec:\n  workloadSelector: {labels: {app: wbe}}\n")
    # a's callers see b's `api`, whose Route sends 10% to b's `web`, which they do not see.
    scope = SCOPE_A.replace('["./*"]', '["./*", "b/api"]')
    leaving = """\
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: api, namespace: b}
spec:
  host: api
  rules: [{backends: [{weight: 90}, {service: web, weight: 10}]}]
"""
    apply_synced(mesh, leaving)
    path = tmp_path / "sidecars.yaml"
    path.write_text(scope + "---\n" + nothing)
    try:
        applied = meshctl(mesh, "apply", "-f", str(path))
        assert applied.returncode == 0, applied.stderr
        assert [line for line in applied.stderr.splitlines() if "warning" in line] == [
            "warning: Sidecar a/typo: selects no registered sidecar of namespace a with app=wbe "
            "(labels are a sidecar's --labels and app = its --service; see "
            "docs/resources.md#sidecar)"]
        sync(mesh, http_json(f"{mesh['cp'].info['api']}/api/v1/proxies")[1]["storeVersion"])
        done = meshctl(mesh, "check")
        lines = done.stdout.splitlines()
        assert any("Sidecar a/typo" in line and "selects no registered sidecar" in line
                   for line in lines), done.stdout
        assert any("Sidecar a/default" in line and "scopes 2 sidecar(s)" in line
                   for line in lines), done.stdout
        assert any("Route b/api for Sidecar a/default" in line and "spec.rules[0].backends[1] "
                   "web (service web of namespace b)" in line for line in lines), done.stdout
        assert sum("Route b/api" in line for line in lines) == 1  # (b has no Sidecar)
    finally:
        meshctl(mesh, "delete", "route", "api", "-n", "b")
        meshctl(mesh, "delete", "sidecar", "typo", "-n", "a")
        delete(mesh, "sidecar", "default", "a")


def test_check_and_apply_warn_of_two_sidecars_selecting_one_sidecar(
        mesh: dict[str, Any], tmp_path: Path) -> None:
    """a's `all-v1` (version=v1) and `web-only` (app=web) both select web: all-v1, the first
    by name, is its Sidecar (web does not get web-only's egress: b's api stays unknown to
    it). `apply` and `check` name both and the one that applies; api, selected by all-v1
    alone, is named by neither."""
    all_v1 = SCOPE_A.replace("name: default", "name: all-v1").replace(
        "spec:\n", "spec:\n  workloadSelector: {labels: {version: v1}}\n")
    web_only = SCOPE_A.replace("name: default", "name: web-only").replace(
        "spec:\n", "spec:\n  workloadSelector: {labels: {app: web}}\n").replace(
        '["./*"]', '["./*", "b/*"]')
    path = tmp_path / "overlapping.yaml"
    path.write_text(all_v1 + "---\n" + web_only)
    web = mesh["names"]["web-a"]
    detail = (f"Sidecar a/all-v1 and a/web-only: both select {web} (version=v1 and app=web): "
              "all-v1 applies (the first by name); web-only's egress hosts and "
              "outboundTrafficPolicy are not used for them")
    try:
        applied = meshctl(mesh, "apply", "-f", str(path))
        assert applied.returncode == 0, applied.stderr
        assert [line for line in applied.stderr.splitlines() if "warning" in line] == [
            f"warning: {detail}"]
        sync(mesh, http_json(f"{mesh['cp'].info['api']}/api/v1/proxies")[1]["storeVersion"])
        # what the warning says: web is scoped by all-v1 (./* only), b's api unknown to it
        assert call(mesh["outbound"]["a"], "api.b")[:2] == (404, "no_route")
        shown = meshctl(mesh, "proxy-config", web)
        assert "Scope:           Sidecar a/all-v1 · egress ./*" in shown.stdout, shown.stdout
        done = meshctl(mesh, "check")
        name, _, rest = detail.partition(": ")
        warned = [line for line in done.stdout.splitlines() if "a/web-only" in line]
        assert warned == ["  ‼ Sidecar a/web-only: scopes no sidecar (app=web in a): each it "
                          "selects gets another Sidecar, see below",
                          f"  ‼ {name}: {rest}"], done.stdout
        assert "give them selectors that differ in a label's value" in done.stdout
        assert sum("both select" in line for line in done.stdout.splitlines()) == 1
    finally:
        meshctl(mesh, "delete", "sidecar", "web-only", "-n", "a")
        delete(mesh, "sidecar", "all-v1", "a")


def test_an_invalid_sidecar_is_refused_with_its_field_path(mesh: dict[str, Any],
                                                           tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SCOPE_A.replace('"./*"', '"b"') + "---\n"
                    + SCOPE_A.replace("name: default", "name: second"))
    expected = [f"{path} doc 1: spec.egress[0].hosts[0]: expected 'namespace/dnsName'"]
    for argv in (("validate", "-f", str(path)), ("apply", "-f", str(path))):
        done = meshctl(mesh, *argv)
        assert done.returncode == 1, (argv, done.stdout, done.stderr)
        assert all(e in done.stderr for e in expected), (argv, done.stderr)
    assert "No resources found" in meshctl(mesh, "get", "sidecars", "-n", "a").stdout \
        or "second" not in meshctl(mesh, "get", "sidecars", "-n", "a").stdout
    path.write_text(SCOPE_A + "---\n" + SCOPE_A.replace("name: default", "name: second"))
    done = meshctl(mesh, "apply", "-f", str(path))
    assert done.returncode == 1
    assert ("spec: namespace a already has a namespace-wide Sidecar (one without "
            "workloadSelector)") in done.stderr, done.stderr

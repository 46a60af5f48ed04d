"""meshctl apply, get, delete and describe against the real HTTP API on a loopback socket."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from meshctl.controlplane.memstore import MemStore
from tests.resources import documents, route
from tests.test_cli_support import (
    JASON,
    POLICY,
    ControlPlane,
    check_golden,
    control_plane,
    fake_proxies,
    reviews_route,
    run_meshctl,
    write,
)
from tests.test_cli_support import token as token  # the autouse fixture: AMI_TOKEN

ROOT = Path(__file__).resolve().parent.parent
GATEWAY = """apiVersion: ami.mesh/v1alpha1
kind: Gateway
metadata: {name: ingress, namespace: edge}
spec:
  listen: 0.0.0.0:8080
  rules: [{destination: productpage}]
  passthrough: [{sniHosts: [db.example.com], destination: db}]
"""
PEER_AUTHENTICATIONS = """apiVersion: ami.mesh/v1alpha1
kind: PeerAuthentication
metadata: {name: legacy, namespace: default}
spec: {selector: {service: legacy}, mtls: {mode: PERMISSIVE}}
---
apiVersion: ami.mesh/v1alpha1
kind: PeerAuthentication
metadata: {name: default, namespace: edge}
spec: {}
---
apiVersion: ami.mesh/v1alpha1
kind: PeerAuthentication
metadata: {name: reviews-v3, namespace: default}
spec:
  selector: {matchLabels: {app: reviews, version: v3}}
  mtls: {mode: STRICT}
  portLevelMtls: {9443: {mode: DISABLE}, 9080: {mode: PERMISSIVE}}
"""
REJECTED = {"conditions": [{
    "type": "Accepted", "status": "False", "reason": "Invalid",
    "lastTransitionTime": "2026-01-02T03:04:05Z",
    "message": "mesh/routes/reviews.yaml doc 1: spec.rules[0].backends: weights sum to 101, "
               "must be 100\nmesh/routes/reviews.yaml doc 1: spec.host: required"}]}


@pytest.fixture
async def cp() -> AsyncIterator[ControlPlane]:
    async with control_plane(MemStore()) as plane:
        yield plane


@pytest.fixture
def mesh(tmp_path: Path) -> Path:
    """A config dir: policies/reviews.yaml, routes/reviews.yaml (v1 90 / v2 10)."""
    write(tmp_path / "mesh" / "policies" / "reviews.yaml", POLICY)
    write(tmp_path / "mesh" / "routes" / "reviews.yaml", reviews_route(90, 10))
    return tmp_path / "mesh"


async def test_apply_is_created_then_unchanged_then_configured(cp: ControlPlane,
                                                               mesh: Path) -> None:
    """Applying a directory prints created, then unchanged, then configured for the edit."""
    assert await cp.meshctl("apply", "-f", str(mesh)) == (0, (
        "destinationpolicy.ami.mesh/reviews created\nroute.ami.mesh/reviews created\n"), "")
    assert (await cp.meshctl("apply", "-f", str(mesh)))[1] == (
        "destinationpolicy.ami.mesh/reviews unchanged\nroute.ami.mesh/reviews unchanged\n")
    write(mesh / "routes" / "reviews.yaml", reviews_route(50, 50))
    assert (await cp.meshctl("apply", "-f", str(mesh)))[1] == (
        "destinationpolicy.ami.mesh/reviews unchanged\nroute.ami.mesh/reviews configured\n")
    stored = await cp.store.get("Route", "default", "reviews")
    assert stored is not None and stored.resource.raw["spec"]["rules"][1]["backends"][0] == {
        "subset": "v1", "weight": 50}


async def test_apply_reports_server_error_at_file_and_doc(cp: ControlPlane, tmp_path: Path,
                                                          mesh: Path) -> None:
    """A cross-document error found by the server names the file and document; none applied."""
    await cp.meshctl("apply", "-f", str(mesh / "policies"))
    bad = write(tmp_path / "more" / "routes.yaml",
                documents(GATEWAY, route("reviews", {"v1": 90, "v9": 10}, rules=[JASON])))
    code, out, err = await cp.meshctl("apply", "-f", str(mesh / "policies"), "-f", str(bad))
    assert (code, out) == (1, "")
    assert err == (f"error: {bad} doc 2: spec.rules[1].backends[1].subset: unknown subset 'v9' "
                   "for host reviews (known: v1, v2, v3)\n")
    assert await cp.store.get("Gateway", "edge", "ingress") is None  # all or nothing


async def test_apply_rejects_bad_file_locally(cp: ControlPlane, tmp_path: Path) -> None:
    """A schema error is reported with file, document and field (an `error:` line, like the
    server's), and nothing is sent."""
    bad = write(tmp_path / "r.yaml", "---\n---\n" + reviews_route(90, 11))
    code, out, err = await cp.meshctl("apply", "-f", str(bad))
    assert (code, out) == (1, "")
    assert err == (f"error: {bad} doc 2: spec.rules[1].backends: weights sum to 101, "
                   "must be 100\n")
    assert await cp.store.list() == []


async def test_apply_dry_run_is_offline(tmp_path: Path, mesh: Path) -> None:
    """--dry-run checks the set without a control plane (the URL given is never reached)."""
    offline = "http://127.0.0.1:9"
    assert await run_meshctl("--control-plane", offline, "apply", "--dry-run", "-f",
                             str(mesh)) == (0, "destinationpolicy.ami.mesh/reviews valid (dry "
                                               "run, offline)\nroute.ami.mesh/reviews valid "
                                               "(dry run, offline)\n", "")
    code, _, err = await run_meshctl("--control-plane", offline, "apply", "--dry-run", "-f",
                                     str(mesh / "routes"))
    assert code == 1 and "unknown subset 'v1' for host reviews" in err
    # the route's subsets are the control plane's to know: say how to check against it
    assert err.endswith("or check them against the control plane with --dry-run=server\n"), err


async def _seed(cp: ControlPlane, mesh: Path) -> None:
    """The mesh dir, a Gateway in namespace edge, and a rejection status on the route."""
    write(mesh / "edge" / "gateway.yaml", GATEWAY)
    assert (await cp.meshctl("apply", "-f", str(mesh)))[0] == 0
    await cp.store.set_status(("Route", "default", "reviews"), REJECTED)


async def test_get_tables_match_golden_files(cp: ControlPlane, mesh: Path) -> None:
    """Tables per kind (short, singular and plural names alike) match the golden files."""
    await _seed(cp, mesh)
    routes = await cp.meshctl("get", "routes")
    assert routes[0] == 0
    check_golden("get_routes.txt", routes[1])
    assert await cp.meshctl("get", "rt") == routes
    assert await cp.meshctl("get", "Route", "reviews") == routes
    check_golden("get_destinationpolicies.txt", (await cp.meshctl("get", "dp"))[1])
    check_golden("get_gateways_all_namespaces.txt", (await cp.meshctl("get", "gw", "-A"))[1])
    assert await cp.meshctl("get", "gateway") == (0, "", "No gateways found in namespace "
                                                         "default.\n")


async def test_peer_authentications_are_listed_by_every_name(cp: ControlPlane,
                                                             tmp_path: Path) -> None:
    """PeerAuthentication is a kind like the others: applied, then listed under its plural,
    singular and short name with its selector (the service; `<all>`: the namespace; Istio's
    matchLabels as `k=v,...`), its mode (`UNSET` when none is set) and its port-level modes."""
    path = write(tmp_path / "pa.yaml", PEER_AUTHENTICATIONS)
    assert (await cp.meshctl("apply", "-f", str(path)))[0] == 0
    listed = await cp.meshctl("get", "pa", "-A")
    assert listed[0] == 0
    check_golden("get_peerauthentications_all_namespaces.txt", listed[1])
    assert await cp.meshctl("get", "peerauthentications", "-A") == listed
    assert await cp.meshctl("get", "PeerAuthentication", "-A") == listed


async def test_get_yaml_reapplies_unchanged(cp: ControlPlane, mesh: Path,
                                            tmp_path: Path) -> None:
    """``get -o yaml`` output applied back is unchanged; ``-o json`` is the wire object."""
    await _seed(cp, mesh)
    code, text, _ = await cp.meshctl("get", "routes", "-o", "yaml")
    assert code == 0 and text.startswith("---\napiVersion: ami.mesh/v1alpha1\nkind: Route\n")
    dumped = write(tmp_path / "dump.yaml", text)
    assert (await cp.meshctl("apply", "-f", str(dumped)))[1] == "route.ami.mesh/reviews unchanged\n"
    one = json.loads((await cp.meshctl("get", "route", "reviews", "-o", "json"))[1])
    assert (one["metadata"]["resourceVersion"], one["status"]) == ("3", REJECTED)
    listed = json.loads((await cp.meshctl("get", "dp", "-A", "-o", "json"))[1])
    assert (listed["kind"], [i["metadata"]["name"] for i in listed["items"]]) == ("List",
                                                                                 ["reviews"])


async def test_get_errors(cp: ControlPlane) -> None:
    """A missing object is the server's message, exit 1; an unknown kind is a usage error."""
    assert await cp.meshctl("get", "route", "nope") == (
        1, "", "error: Route default/nope not found\n")
    with pytest.raises(SystemExit) as usage:
        await cp.meshctl("get", "virtualservice")
    assert usage.value.code == 2


@pytest.mark.parametrize("command", [["get", "virtualservice"],
                                     ["describe", "virtualservice", "x"]])
def test_unknown_kind_lists_every_kind(command: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown kind's usage error, and the command's help, list every kind the command
    takes, the Gateway API's HTTPRoute and GRPCRoute included (and `all` for get)."""
    from meshctl.api.kindnames import KIND_PLURALS
    from meshctl.cli import build_parser

    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(command)
    err = capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args([command[0], "--help"])
    helptext = " ".join(capsys.readouterr().out.split())
    assert usage.value.code == 2
    for kind in KIND_PLURALS:
        assert kind.lower() in err.split("expected one of ")[1], kind
        assert kind.lower() in helptext, kind
    assert err.rstrip().endswith("or all" if command[0] == "get" else "service|svc")


async def test_unreachable_control_plane_is_one_line(tmp_path: Path) -> None:
    """Without a control plane, the error names the URL it tried."""
    code, _, err = await run_meshctl("--control-plane", "127.0.0.1:9", "get", "routes")
    assert code == 1 and err.startswith("error: cannot reach the control plane at "
                                        "http://127.0.0.1:9:")


async def test_delete_by_name_and_by_file(cp: ControlPlane, mesh: Path) -> None:
    """delete KIND NAME and delete -f remove objects; a missing one exits 1 with its message."""
    await _seed(cp, mesh)
    assert await cp.meshctl("delete", "gw", "ingress", "-n", "edge") == (
        0, "gateway.ami.mesh/ingress deleted\n", "")
    assert await cp.meshctl("delete", "-f", str(mesh / "routes")) == (
        0, "route.ami.mesh/reviews deleted\n", "")
    assert [o.key for o in await cp.store.list()] == [("DestinationPolicy", "default",
                                                       "reviews")]
    assert await cp.meshctl("delete", "-f", str(mesh / "routes")) == (
        1, "", "error: Route default/reviews not found\n")
    assert (await cp.meshctl("delete", "route"))[0] == 2


async def test_describe_shows_status_spec_and_proxies(mesh: Path) -> None:
    """describe prints the object, its conditions and every proxy's sync state and the Ami
    version it runs, `unknown` when the control plane does not say (golden)."""
    proxies: list[dict[str, Any]] = [{"name": "reviews-v2-1", "service": "reviews", "version": "v2",
                "configVersion": "c0ffee", "synced": False, "nack": "routes[0]: bad",
                "proxyVersion": "0.1.0"},
               {"name": "ratings-v1-1", "service": "ratings", "version": "v1",
                "configVersion": None, "synced": False, "nack": None},  # no proxyVersion
               {"name": "productpage-v1-1", "service": "productpage", "version": "v1",
                "configVersion": "a1b2c3", "synced": True, "proxyVersion": "0.2.0"}]
    async with control_plane(MemStore(), [fake_proxies(3, proxies)]) as cp:
        await _seed(cp, mesh)
        code, out, _ = await cp.meshctl("describe", "rt", "reviews")
    assert code == 0
    check_golden("describe_route.txt", out)


async def test_describe_without_proxy_status(cp: ControlPlane, mesh: Path) -> None:
    """When the control plane has no proxy status endpoint, describe says so and succeeds."""
    await _seed(cp, mesh)
    code, out, _ = await cp.meshctl("describe", "destinationpolicy", "reviews")
    assert code == 0 and out.endswith("Proxies:           proxy status unavailable\n")
    assert "Status:            Accepted\n" in out


async def test_describe_prints_the_object_as_data(cp: ControlPlane, mesh: Path) -> None:
    """describe -o json|yaml prints the object itself, as get KIND NAME -o json|yaml."""
    await _seed(cp, mesh)
    code, out, _ = await cp.meshctl("describe", "rt", "reviews", "-o", "json")
    assert code == 0 and json.loads(out)["spec"]["host"] == "reviews"
    code, out, _ = await cp.meshctl("describe", "dp", "reviews", "-o", "yaml")
    assert code == 0 and out == (await cp.meshctl("get", "dp", "reviews", "-o", "yaml"))[1]


async def test_describe_service_needs_a_control_plane_serving_it(cp: ControlPlane,
                                                                  capsys: pytest.CaptureFixture[str]
                                                                  ) -> None:
    """describe service against a control plane without its endpoint says so (exit 1); an
    unknown kind is a usage error naming service|svc among the kinds."""
    assert await cp.meshctl("describe", "svc", "reviews") == (
        1, "", "error: the control plane does not serve /api/v1/services/.../describe (it is "
               "older than meshctl describe service)\n")
    from meshctl.cli import build_parser

    with pytest.raises(SystemExit) as usage:
        build_parser().parse_args(["describe", "deployment", "reviews"])
    assert usage.value.code == 2 and "service|svc" in capsys.readouterr().err


async def test_installed_meshctl_reads_env(cp: ControlPlane, mesh: Path) -> None:
    """The installed ``meshctl get`` finds the control plane through AMI_CONTROL_PLANE."""
    await _seed(cp, mesh)
    env = {**os.environ, "AMI_CONTROL_PLANE": cp.url.removeprefix("http://")}
    proc = await asyncio.create_subprocess_exec(
        str(ROOT / ".venv" / "bin" / "meshctl"), "get", "routes", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert (proc.returncode, err) == (0, b"")
    check_golden("get_routes.txt", out.decode())


def _wide_route(host: str, rules: int = 30) -> str:
    """A valid Route of about 600 KB: rules matching long header values."""
    import yaml

    return yaml.safe_dump({
        "apiVersion": "ami.mesh/v1alpha1", "kind": "Route", "metadata": {"name": host},
        "spec": {"host": host, "rules": [
            *({"name": f"r{i}", "matches": [{"headers": {"x-user": {
                "exact": "u" * 20000 + str(i)}}}], "backends": [{"service": host}]}
              for i in range(rules)),
            {"backends": [{"service": host}]}]}})


async def test_apply_over_the_request_limit_names_the_files_and_the_limit(
        cp: ControlPlane, tmp_path: Path) -> None:
    """A directory whose files each fit but together exceed the API's 1 MiB request limit:
    nothing is sent (apply is one all-or-nothing request), the error says the size, the
    limit and the files, largest first; each file alone applies. The API's own 413 says the
    limit too, not only 'Request Entity Too Large'."""
    from meshctl.controlplane.httpapi import MAX_BODY_BYTES
    from tests.helpers_mesh import http_json

    write(tmp_path / "big" / "a.yaml", _wide_route("reviews"))
    write(tmp_path / "big" / "b.yaml", _wide_route("ratings", 31))
    # (1.2 MB of YAML to read and check takes a few seconds: a deadline for a busy machine)
    code, out, err = await cp.meshctl("apply", "-f", str(tmp_path / "big"), deadline=60)
    assert (code, out) == (1, ""), err
    assert err.startswith("error: the apply would send 1.2 MiB, over the control plane's "
                          "request limit of 1.0 MiB (one all-or-nothing request, nothing was "
                          f"sent): {tmp_path / 'big' / 'b.yaml'} ("), err
    assert f"{tmp_path / 'big' / 'a.yaml'} (" in err and "apply fewer files" in err
    assert await cp.store.list() == []
    code, out, err = await cp.meshctl("apply", "-f", str(tmp_path / "big" / "a.yaml"),
                                      deadline=60)
    assert (code, out) == (0, "route.ami.mesh/reviews created\n"), err

    status, body = await asyncio.to_thread(http_json, cp.url + "/api/v1/apply",
                                           "POST", "x" * (MAX_BODY_BYTES + 1), "test-token",
                                           "application/yaml")
    assert status == 413 and "limit of 1024 KiB" in body["error"], body
    assert "Maximum request body size 1048576 exceeded" in body["error"], body

"""The meshctl CLI as a user runs it: a subprocess against a real `meshctl serve` (directory
store, HTTP API) on loopback. Each test uses its own namespace so they share one control plane."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers_mesh import (
    PYTHON,
    ROOT,
    MeshProcess,
    free_port,
    http_get,
    http_json,
    start_control_plane,
    wait_for,
)
from tests.test_cli_support import write

POLICY = """apiVersion: ami.mesh/v1alpha1
kind: AuthorizationPolicy
metadata: {name: %(name)s%(ns)s}
spec: {action: %(action)s, rules: [{from: [{services: [x]}]}]}
"""


def policy(name: str, namespace: str | None = None, action: str = "DENY") -> str:
    ns = f", namespace: {namespace}" if namespace else ""
    return POLICY % {"name": name, "ns": ns, "action": action}


@pytest.fixture(scope="module")
def cp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MeshProcess]:
    proc = start_control_plane(tmp_path_factory.mktemp("cliserve"), warmup=0.0)
    try:
        yield proc
    finally:
        proc.stop()


def meshctl(cp: MeshProcess, *argv: str, stdin: str | None = None,
            env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[int, str, str]:
    """``python -m meshctl --control-plane URL argv...``: (exit code, stdout, stderr)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AMI_")}
    full_env.update(AMI_TOKEN=cp.info["token"], AMI_CONTROL_PLANE=cp.info["api"],
                    PYTHONPATH=str(ROOT))
    full_env.update(env or {})
    done = subprocess.run([PYTHON, "-m", "meshctl", *argv], input=stdin, capture_output=True,
                          text=True, env=full_env, cwd=cwd or ROOT, timeout=60)
    return done.returncode, done.stdout, done.stderr


def api(cp: MeshProcess, path: str, method: str = "GET", body: Any = None,
        content_type: str = "application/json") -> tuple[int, Any]:
    return http_json(cp.info["api"] + path, method, body, token=cp.info["token"],
                     content_type=content_type)


def get(cp: MeshProcess, namespace: str, name: str, plural: str = "authorizationpolicies"
        ) -> Any:
    status, body = api(cp, f"/api/v1/namespaces/{namespace}/{plural}/{name}")
    return body if status == 200 else None


def store_file(cp: MeshProcess, rel: str) -> Path:
    return Path(cp.info["config_dir"]) / rel


def test_apply_of_a_stale_copy_is_a_conflict_not_a_lost_update(cp: MeshProcess,
                                                                tmp_path: Path) -> None:
    """`get -o yaml > f`, someone else changes the object, `apply -f f` after editing f: the
    resourceVersion in f is stale, so the apply is refused (409) instead of silently undoing
    the other change; the error names the file and document."""
    assert meshctl(cp, "apply", "-f", "-", stdin=policy("stale", "t-stale"))[0] == 0
    code, saved, _ = meshctl(cp, "get", "ap", "stale", "-n", "t-stale", "-o", "yaml")
    assert code == 0 and "resourceVersion" in saved
    # another writer: the same policy, now ALLOW
    assert meshctl(cp, "apply", "-f", "-", stdin=policy("stale", "t-stale", "ALLOW"))[1] == (
        "authorizationpolicy.ami.mesh/stale configured\n")
    edited = write(tmp_path / "stale.yaml", saved.replace("- x\n", "- y\n"))
    assert edited.read_text() != saved
    code, out, err = meshctl(cp, "apply", "-f", str(edited))
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {edited} doc 1: AuthorizationPolicy t-stale/stale changed "
                          "since resourceVersion"), err
    assert get(cp, "t-stale", "stale")["spec"]["action"] == "ALLOW"  # the other change stays
    # the same file applied unchanged is fine: nothing would be lost
    fresh = meshctl(cp, "get", "ap", "stale", "-n", "t-stale", "-o", "yaml")[1]
    assert meshctl(cp, "apply", "-f", "-", stdin=fresh)[1] == (
        "authorizationpolicy.ami.mesh/stale unchanged\n")


def test_apply_is_all_or_nothing_when_a_target_file_has_a_rejected_edit(
        cp: MeshProcess, tmp_path: Path) -> None:
    """One object of an apply lives in a file whose hand edit was rejected: nothing of the
    apply is written (not even the objects before it), and the error says which document."""
    assert meshctl(cp, "apply", "-f", "-", stdin=policy("held", "t-atomic"))[0] == 0
    path = store_file(cp, "authorizationpolicy/t-atomic/held.yaml")
    path.write_text(path.read_text() + "garbage: [\n")
    wait_for(lambda: "Rejected" in meshctl(cp, "get", "ap", "-n", "t-atomic")[1], 15,
             "the bad hand edit to be rejected")
    both = write(tmp_path / "both.yaml", policy("fresh", "t-atomic") + "---\n"
                 + policy("held", "t-atomic", "ALLOW"))
    code, out, err = meshctl(cp, "apply", "-f", str(both))
    assert (code, out) == (1, "")
    assert err.startswith(f"error: {both} doc 2: AuthorizationPolicy t-atomic/held:"), err
    assert "has an invalid edit on disk" in err
    assert get(cp, "t-atomic", "fresh") is None
    assert not store_file(cp, "authorizationpolicy/t-atomic/fresh.yaml").exists()


def test_namespace_flag_of_apply_and_delete_by_file(cp: MeshProcess, tmp_path: Path) -> None:
    """As kubectl: `-n NS` puts the file's documents without a namespace in NS, and a document
    that names another namespace is refused; `delete -f -n NS` never deletes in `default`."""
    plain = write(tmp_path / "p.yaml", policy("nsflag"))
    assert meshctl(cp, "apply", "-f", str(plain)) == (
        0, "authorizationpolicy.ami.mesh/nsflag created\n", "")
    assert meshctl(cp, "apply", "-n", "t-ns", "-f", str(plain)) == (
        0, "authorizationpolicy.ami.mesh/nsflag created\n", "")
    assert get(cp, "t-ns", "nsflag") is not None
    assert meshctl(cp, "delete", "-f", str(plain), "-n", "t-ns") == (
        0, "authorizationpolicy.ami.mesh/nsflag deleted\n", "")
    assert get(cp, "t-ns", "nsflag") is None
    assert get(cp, "default", "nsflag") is not None  # not the one in default
    code, out, err = meshctl(cp, "delete", "-f", str(plain), "-n", "t-ns")
    assert (code, out) == (1, "")
    assert err == "error: AuthorizationPolicy t-ns/nsflag not found\n"
    elsewhere = write(tmp_path / "q.yaml", policy("nsflag", "default"))
    for command in ("apply", "delete"):
        code, out, err = meshctl(cp, command, "-n", "t-ns", "-f", str(elsewhere))
        assert (code, out) == (1, "")
        assert err == (f"error: {elsewhere} doc 1: metadata.namespace: 'default' does not "
                       "match -n t-ns\n")
    assert get(cp, "default", "nsflag") is not None
    assert meshctl(cp, "delete", "-f", str(plain))[0] == 0
    assert get(cp, "default", "nsflag") is None


def _local_address() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_proxy_status_sends_the_token_to_a_remote_control_plane(tmp_path: Path) -> None:
    """Reads from another machine need the token: proxy-status must send it like get does."""
    address = _local_address()
    if address is None:
        pytest.skip("no non-loopback address to reach the control plane from 'outside'")
    port = free_port()
    remote = start_control_plane(tmp_path, http_port=port, warmup=0.0,
                                 args=("--listen", f"0.0.0.0:{port}"))
    try:
        remote.info["api"] = f"http://{address}:{port}"
        assert meshctl(remote, "get", "rt")[0] == 0
        assert meshctl(remote, "proxy-status", "-o", "json") == (0, "[]\n", "")
        code, out, err = meshctl(remote, "proxy-status", env={"AMI_TOKEN": "wrong"})
        assert (code, out) == (1, "")
        assert err.startswith("error: ") and "token" in err
    finally:
        remote.stop()


def test_unreachable_control_plane_reads_alike_for_every_command(tmp_path: Path) -> None:
    """The one documented line, exit 1, for proxy-status as for get."""
    down = MeshProcess("none", subprocess.Popen(["true"]), tmp_path / "none.log",
                       {"api": f"http://127.0.0.1:{free_port()}", "token": "x"})
    down.proc.wait()
    url = down.info["api"]
    for command in (["get", "rt"], ["proxy-status"]):
        assert meshctl(down, *command) == (
            1, "", f"error: cannot reach the control plane at {url}: [Errno 111] Connection "
                   "refused\n")


def test_get_json_list_round_trips_through_apply(cp: MeshProcess) -> None:
    """`get -o json` of a list is a kind: List document; apply takes it back, unchanged."""
    for name in ("lista", "listb"):
        assert meshctl(cp, "apply", "-f", "-", stdin=policy(name, "t-list"))[0] == 0
    code, listed, _ = meshctl(cp, "get", "ap", "-n", "t-list", "-o", "json")
    assert code == 0 and json.loads(listed)["kind"] == "List"
    assert meshctl(cp, "apply", "-f", "-", stdin=listed) == (
        0, "authorizationpolicy.ami.mesh/lista unchanged\n"
           "authorizationpolicy.ami.mesh/listb unchanged\n", "")
    assert meshctl(cp, "delete", "-f", "-", stdin=listed)[0] == 0
    assert meshctl(cp, "get", "ap", "-n", "t-list", "-o", "json")[1] == (
        '{\n  "apiVersion": "ami.mesh/v1alpha1",\n  "kind": "List",\n  "items": []\n}\n')


def test_configmap_style_symlink_swap_is_picked_up(cp: MeshProcess) -> None:
    """A Kubernetes ConfigMap volume updates by re-pointing the `..data` symlink (every
    visible file is a symlink through it): the store must see the new content."""
    root = store_file(cp, "cm")
    (root / "..v1").mkdir(parents=True)
    (root / "..v1" / "cm.yaml").write_text(policy("cmpol", "t-cm"))
    (root / "..data").symlink_to("..v1")
    (root / "cm.yaml").symlink_to("..data/cm.yaml")
    wait_for(lambda: get(cp, "t-cm", "cmpol"), 15, "the ConfigMap file to be loaded")
    (root / "..v2").mkdir()
    (root / "..v2" / "cm.yaml").write_text(policy("cmpol", "t-cm", "ALLOW"))
    (root / "..data_tmp").symlink_to("..v2")
    os.replace(root / "..data_tmp", root / "..data")
    wait_for(lambda: get(cp, "t-cm", "cmpol")["spec"]["action"] == "ALLOW", 15,
             "the swapped ConfigMap content to go live")


def test_method_not_allowed_says_which_methods_are(cp: MeshProcess) -> None:
    """A 405 carries the Allow header HTTP requires (RFC 9110 15.5.6), in the API's JSON
    error shape."""
    url = cp.info["api"] + "/api/v1/namespaces/default/routes/reviews"
    req = urllib.request.Request(url, method="PATCH", data=b"{}", headers={
        "Authorization": f"Bearer {cp.info['token']}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405
    assert set(err.value.headers["Allow"].split(",")) >= {"GET", "PUT", "DELETE"}
    assert json.loads(err.value.read())["reason"] == "MethodNotAllowed"


def test_apply_without_documents_is_an_error(cp: MeshProcess, tmp_path: Path) -> None:
    """As kubectl's 'no objects passed to apply': an empty directory is most likely a typo."""
    (tmp_path / "empty").mkdir()
    assert meshctl(cp, "apply", "-f", str(tmp_path / "empty")) == (
        1, "", "error: no objects passed to apply\n")
    assert meshctl(cp, "apply", "-f", "-", stdin="---\n# nothing\n") == (
        1, "", "error: no objects passed to apply\n")


def test_write_without_or_with_a_wrong_token_says_which(cp: MeshProcess, tmp_path: Path) -> None:
    """No token found: say that writes need one and where meshctl looks. A token that is not
    the control plane's: say so, rather than claim none was sent."""
    env = {"AMI_TOKEN": "", "HOME": str(tmp_path)}
    assert meshctl(cp, "delete", "ap", "nothing", env=env, cwd=tmp_path) == (
        1, "", "error: writes need 'Authorization: Bearer <token>' (AMI_TOKEN or .ami/token)\n")
    code, out, err = meshctl(cp, "delete", "ap", "nothing", env={"AMI_TOKEN": "wrong"})
    assert (code, out) == (1, "")
    assert err.startswith("error: the bearer token sent is not this control plane's"), err
    assert meshctl(cp, "get", "ap", "nothing", env={"AMI_TOKEN": "wrong"})[2] == (
        "error: AuthorizationPolicy default/nothing not found\n")  # loopback reads stay open


RATE_LIMIT = """apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: %(name)s, namespace: t-inf}
spec: {host: %(name)s, rateLimit: {requestsPerSecond: %(rate)s}}
"""


def test_non_finite_numbers_are_validation_errors_everywhere(cp: MeshProcess,
                                                             tmp_path: Path) -> None:
    """`.inf`/`.nan` (YAML) and 1e400 (JSON) are not numbers a resource can hold: a
    validation error with its field, not a traceback in meshctl, a 500 from the API, or a
    hand edit that stops the config dir's watcher for good."""
    for rate in (".inf", ".nan", "-.inf"):
        bad = write(tmp_path / "inf.yaml", RATE_LIMIT % {"name": "inf", "rate": rate})
        for command in ("validate", "apply"):
            code, out, err = meshctl(cp, command, "-f", str(bad))
            assert (code, out) == (1, ""), (command, rate, err)
            assert "spec.rateLimit.requestsPerSecond: expected a finite number" in err, err
            assert "Traceback" not in err
    body = json.dumps({"apiVersion": "ami.mesh/v1alpha1", "kind": "DestinationPolicy",
                       "metadata": {"name": "inf", "namespace": "t-inf"},
                       "spec": {"host": "inf", "rateLimit": {"requestsPerSecond": 7}}}
                      ).replace(": 7", ": 1e400")  # JSON's spelling of a number too large
    status, answer = api(cp, "/api/v1/apply", "POST", body)
    assert (status, answer["reason"]) == (422, "Invalid"), answer
    # a hand edit in the config dir: rejected, and the watcher keeps going
    store_file(cp, "t-inf/inf.yaml").parent.mkdir(parents=True, exist_ok=True)
    store_file(cp, "t-inf/inf.yaml").write_text(RATE_LIMIT % {"name": "inf", "rate": ".inf"})
    wait_for(lambda: any(e["source"] == "t-inf/inf.yaml" and "finite" in e["message"]
                         for e in api(cp, "/api/v1/errors")[1]["items"]), 15,
             "the hand edit to be rejected")
    store_file(cp, "t-inf/ok.yaml").write_text(RATE_LIMIT % {"name": "ok", "rate": "5"})
    wait_for(lambda: get(cp, "t-inf", "ok", "destinationpolicies"), 15,
             "a later hand edit to be picked up")
    store_file(cp, "t-inf/inf.yaml").unlink()


def test_a_rejected_hand_edit_goes_live_once_an_apply_resolves_it(cp: MeshProcess,
                                                                   tmp_path: Path) -> None:
    """A hand-written route naming a subset no policy defines yet is rejected; once `meshctl
    apply` adds that policy the file is valid and must go live: the store ends up with what
    the files say, and the (now wrong) error goes away."""
    route = store_file(cp, "t-later/shop-route.yaml")
    route.parent.mkdir(parents=True, exist_ok=True)
    route.write_text("apiVersion: ami.mesh/v1alpha1\nkind: Route\n"
                     "metadata: {name: shop, namespace: t-later}\n"
                     "spec: {host: shop, rules: [{backends: [{subset: v1}]}]}\n")

    def rejection() -> list[str]:
        return [e["message"] for e in api(cp, "/api/v1/errors")[1]["items"]
                if e["source"] == "t-later/shop-route.yaml"]

    assert "unknown subset 'v1'" in wait_for(lambda: "".join(rejection()), 15,
                                             "the route file to be rejected")
    policy_file = write(tmp_path / "dp.yaml", (
        "apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\n"
        "metadata: {name: shop, namespace: t-later}\n"
        "spec: {host: shop, subsets: [{name: v1, labels: {version: v1}}]}\n"))
    assert meshctl(cp, "apply", "-f", str(policy_file))[0] == 0
    wait_for(lambda: get(cp, "t-later", "shop", "routes"), 15, "the route file to go live")
    assert rejection() == []


def test_an_address_that_is_not_the_control_plane_is_one_clear_line(tmp_path: Path) -> None:
    """`--control-plane` pointing at another HTTP service (the gateway's port, a web page):
    one `error:` line saying the address is not the control plane's API, exit 1; never a
    JSON traceback nor a whole HTML page on stderr."""
    site = tmp_path / "site"
    (site / "api" / "v1" / "namespaces" / "default" / "routes").mkdir(parents=True)
    (site / "api" / "v1" / "namespaces" / "default" / "routes" / "index.html").write_text(
        "<html><body>a web page</body></html>\n")
    (site / "api" / "v1" / "proxies").write_text('{"hello": "world"}\n')
    port = free_port()
    server = subprocess.Popen([PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                              cwd=site, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    other = MeshProcess("web", server, tmp_path / "web.log",
                        {"api": f"http://127.0.0.1:{port}", "token": "x"})
    try:
        wait_for(lambda: http_get(other.info["api"] + "/")[0] == 200, 15, "the web server")
        (tmp_path / "p.yaml").write_text(policy("p"))
        for argv in (["get", "rt"], ["get", "rt", "reviews"], ["proxy-status"],
                     ["apply", "-f", str(tmp_path / "p.yaml")], ["delete", "rt", "x"]):
            code, out, err = meshctl(other, *argv)
            assert (code, out) == (1, ""), (argv, err)
            assert err.startswith(f"error: http://127.0.0.1:{port} answered HTTP "), (argv, err)
            assert "not as the Ami control plane API does" in err and err.count("\n") == 1, err
        # check says it as its first check's ✘, not as an error: line under a bare title
        code, out, err = meshctl(other, "check")
        assert (code, err) == (1, ""), err
        assert out == (f"Control plane\n  ✘ control plane reachable at http://127.0.0.1:{port}: "
                       f"http://127.0.0.1:{port} answered HTTP 404 but not as the Ami control "
                       "plane API does; is it the control plane's --listen address "
                       "(--control-plane, AMI_CONTROL_PLANE)?\n"), out
    finally:
        other.stop()


BANNER_SERVER = """\
import socket, sys
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    conn, _ = listener.accept()
    conn.sendall(b"SSH-2.0-OpenSSH_9.6\\r\\n")  # speaks first, as SSH does
    conn.close()
"""


def test_an_address_that_speaks_another_protocol_is_one_clear_line(tmp_path: Path) -> None:
    """`--control-plane` pointing at a port that is not HTTP (SSH, a database behind a
    sidecar's TCP port): one `error:` line, exit 1; it was http.client's traceback."""
    port = free_port()
    server = subprocess.Popen([PYTHON, "-c", BANNER_SERVER, str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    other = MeshProcess("ssh", server, tmp_path / "ssh.log",
                        {"api": f"http://127.0.0.1:{port}", "token": "x"})
    try:
        wait_for(lambda: _connects(port), 15, "the banner server")
        for argv in (["get", "rt"], ["proxy-status"], ["stat"], ["describe", "svc", "x"]):
            code, out, err = meshctl(other, *argv)
            assert (code, out) == (1, ""), (argv, err)
            assert err == (f"error: http://127.0.0.1:{port} answered, but not in HTTP "
                           "(BadStatusLine: 'SSH-2.0-OpenSSH_9.6\\r\\n'); is it the control "
                           "plane's --listen address (--control-plane, AMI_CONTROL_PLANE)?\n"), err
        code, _, err = meshctl(other, "bug-report", "-o", str(tmp_path / "report.tar.gz"))
        assert code == 1 and "answered, but not in HTTP" in err and "Traceback" not in err, err
        code, out, err = meshctl(other, "check")
        assert (code, err) == (1, ""), err
        assert out.startswith(f"Control plane\n  ✘ control plane reachable at http://127.0.0.1:"
                              f"{port}: http://127.0.0.1:{port} answered, but not in HTTP "
                              "(BadStatusLine"), out
    finally:
        other.stop()


def _connects(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
        return True
    return False


def test_apply_order_of_files_does_not_matter(cp: MeshProcess, tmp_path: Path) -> None:
    """A route and the policy defining its subset, given route first: the set is valid as a
    whole, so the apply succeeds (the config dir store used to judge the route alone, before
    the policy was written, and refuse it)."""
    route = write(tmp_path / "route.yaml", (
        "apiVersion: ami.mesh/v1alpha1\nkind: Route\nmetadata: {name: cart, namespace: t-order}\n"
        "spec: {host: cart, rules: [{backends: [{subset: v1, weight: 100}, "
        "{subset: v2, weight: 0}]}]}\n"))
    dp = write(tmp_path / "dp.yaml", (
        "apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\n"
        "metadata: {name: cart, namespace: t-order}\nspec: {host: cart, subsets: "
        "[{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]}\n"))
    assert meshctl(cp, "apply", "-f", str(route), "-f", str(dp)) == (
        0, "route.ami.mesh/cart created\ndestinationpolicy.ami.mesh/cart created\n", "")
    # and back: v2 leaves the policy and the route together, policy first
    dp.write_text(dp.read_text().replace(", {name: v2, labels: {version: v2}}", ""))
    route.write_text(route.read_text().replace("weight: 100}, {subset: v2, weight: 0}",
                                               "weight: 100}"))
    assert meshctl(cp, "apply", "-f", str(dp), "-f", str(route)) == (
        0, "destinationpolicy.ami.mesh/cart configured\nroute.ami.mesh/cart configured\n", "")


MESH = """apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {name: reviews, namespace: %(ns)s}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {name: reviews, namespace: %(ns)s}
spec:
  host: reviews
  rules: [{backends: [{subset: v1, weight: 90}, {subset: v2, weight: 10}]}]
"""


def test_delete_refuses_to_leave_a_route_without_its_subsets(cp: MeshProcess,
                                                              tmp_path: Path) -> None:
    """Deleting the DestinationPolicy a Route's subsets come from would send that traffic to
    503s: refused, naming what uses it, until the Route goes first; `delete -f` of both works
    whatever order the file has (Routes are deleted first)."""
    ns = "delref"
    path = tmp_path / "mesh.yaml"
    path.write_text(MESH % {"ns": ns})
    assert meshctl(cp, "apply", "-f", str(path))[0] == 0
    code, _, err = meshctl(cp, "delete", "destinationpolicy", "reviews", "-n", ns)
    assert code == 1 and "unknown subset 'v1'" in err and "first" in err, err
    assert get(cp, ns, "reviews", "destinationpolicies")["spec"]["host"] == "reviews"
    code, out, err = meshctl(cp, "delete", "-f", str(path))  # the policy comes first in the file
    assert code == 0, err
    assert out.splitlines() == ["route.ami.mesh/reviews deleted",
                                "destinationpolicy.ami.mesh/reviews deleted"]

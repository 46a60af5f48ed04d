"""Istio's own YAML applied as written to a real control plane, sidecars (mTLS) and apps: a
Bookinfo VirtualService and DestinationRule split and match, an Istio AuthorizationPolicy
refuses a caller by its principal, and the CLI names each translation."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers_mesh import http_json, wait_for
from tests.meshbuilder import Mesh
from tests.test_istio_yaml import DESTINATION_RULE_ALL

pytestmark = pytest.mark.timeout(240)

# Istio's samples/bookinfo/networking/destination-rule-all.yaml (reviews part)
DESTINATION_RULE = DESTINATION_RULE_ALL.split("---\n")[0]
# virtual-service-reviews-jason-v2-v3.yaml's match, then virtual-service-reviews-90-10.yaml
VIRTUAL_SERVICE = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
    - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
      weight: 90
    - destination:
        host: reviews
        subset: v3
      weight: 10
"""
# The authorization task's shape: only productpage's service account may GET reviews.
AUTHORIZATION = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-viewer
spec:
  selector:
    matchLabels:
      app: reviews
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/productpage"]
    to:
    - operation:
        methods: ["GET"]
"""


class IstioMesh(Mesh):
    """reviews v1, v2, v3 behind sidecars, and two callers: productpage and ratings."""

    bare_env = True

    def build(self) -> IstioMesh:
        self.control_plane(warmup=0.0)  # default MeshConfig: STRICT mTLS
        self.service("reviews", "v1", "v2", "v3")
        self.productpage = self.sidecar("productpage")
        self.ratings = self.sidecar("ratings")
        return self

    def call(self, headers: dict[str, str] | None = None,
             via: str = "productpage") -> tuple[int, bytes]:
        return self.get(self.productpage if via == "productpage" else self.ratings,
                        "reviews", headers=headers)

    def stored(self, plural: str, name: str) -> dict[str, Any]:
        status, body = http_json(f"{self.cp.info['api']}/api/v1/namespaces/default/"
                                 f"{plural}/{name}", token=self.cp.info["token"])
        assert status == 200 and isinstance(body, dict), body
        return body

    def sync_to(self, plural: str, name: str) -> None:
        meta = self.stored(plural, name)["metadata"]
        self.sync(int(meta["resourceVersion"]))


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IstioMesh]:
    with IstioMesh(tmp_path_factory.mktemp("istio")) as m:
        m.build().wait_synced()
        wait_for(lambda: m.call()[0] == 200, 20, "reviews reachable over mTLS")
        yield m


def test_bookinfo_virtualservice_splits_and_matches(mesh: IstioMesh, tmp_path: Path) -> None:
    """`meshctl apply -f` of Istio's Bookinfo DestinationRule and VirtualService names each
    translation; jason's requests all reach v2, the others split 90/10 between v1 and v3."""
    file = tmp_path / "bookinfo.yaml"
    # Alone, the VirtualService names subsets the control plane does not know: refused, on
    # the Istio document's fields.
    file.write_text(VIRTUAL_SERVICE)
    refused = mesh.meshctl("apply", "-f", str(file))
    assert refused.returncode == 1, refused.stdout
    assert (f"error: {file} doc 1: spec.http[0].route[0].destination.subset: unknown subset "
            "'v2' for host reviews") in refused.stderr, refused.stderr
    file.write_text(DESTINATION_RULE + "---\n" + VIRTUAL_SERVICE)
    applied = mesh.meshctl("apply", "-f", str(file))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == [
        "destinationrule.networking.istio.io/reviews -> destinationpolicy.ami.mesh/reviews "
        "created",
        "virtualservice.networking.istio.io/reviews -> route.ami.mesh/reviews created"]
    mesh.sync_to("routes", "reviews")
    assert {mesh.call({"end-user": "jason"}) for _ in range(20)} == {(200, b"reviews-v2")}
    counts = Counter(mesh.call()[1] for _ in range(400))
    assert set(counts) == {b"reviews-v1", b"reviews-v3"}, counts
    # binomial(400, 0.1): sd 6; 30 is five of them
    assert abs(counts[b"reviews-v3"] - 40) <= 30, counts

    # The stored objects are Ami's kinds, saying where they came from.
    route = mesh.stored("routes", "reviews")
    assert route["kind"] == "Route"
    assert route["metadata"]["annotations"] == {
        "ami.mesh/translated-from": "virtualservice.networking.istio.io/reviews"}
    table = mesh.meshctl("get", "routes")
    assert table.returncode == 0 and "reviews" in table.stdout, table.stderr
    istio_kind = mesh.meshctl("get", "virtualservices")
    assert istio_kind.returncode == 2 and (
        "unknown kind 'virtualservices': an Istio VirtualService is stored as the Route it is "
        "translated into; use routes") in istio_kind.stderr, istio_kind.stderr
    same = mesh.meshctl("diff", "-f", str(file))
    assert same.returncode == 0 and same.stdout == "", same.stdout + same.stderr
    again = mesh.meshctl("apply", "-f", str(file))
    assert "virtualservice.networking.istio.io/reviews -> route.ami.mesh/reviews unchanged" \
        in again.stdout, again.stdout + again.stderr

    # 50/50 now: diff compares the translation with what is stored
    file.write_text(DESTINATION_RULE + "---\n"
                    + VIRTUAL_SERVICE.replace("weight: 90", "weight: 50")
                    .replace("weight: 10", "weight: 50"))
    changed = mesh.meshctl("diff", "-f", str(file))
    assert changed.returncode == 1, changed.stdout + changed.stderr
    assert "+" in changed.stdout and "weight: 50" in changed.stdout, changed.stdout

    deleted = mesh.meshctl("delete", "-f", str(file))
    assert deleted.returncode == 0, deleted.stderr
    assert sorted(deleted.stdout.splitlines()) == [
        "destinationrule.networking.istio.io/reviews -> destinationpolicy.ami.mesh/reviews "
        "deleted",
        "virtualservice.networking.istio.io/reviews -> route.ami.mesh/reviews deleted"]
    status, body = http_json(mesh.cp.info["api"] + "/api/v1/routes",
                             token=mesh.cp.info["token"])
    assert status == 200 and body["items"] == [], body


def test_istio_authorization_policy_refuses_other_principals(mesh: IstioMesh) -> None:
    """ALLOW from `cluster.local/ns/default/sa/productpage`: productpage's GET is served,
    ratings' (another identity, same mTLS) gets 403; deleting the policy lets it in."""
    revision = mesh.apply(AUTHORIZATION)
    mesh.sync(revision)
    assert mesh.call()[0] == 200
    status, body = mesh.call(via="ratings")
    assert status == 403 and b"not_authorized" in body, (status, body)
    policy = mesh.stored("authorizationpolicies", "reviews-viewer")
    assert policy["spec"] == {
        "selector": {"service": "reviews"}, "action": "ALLOW",
        "rules": [{"from": [{"namespaces": ["default"], "services": ["productpage"]}],
                   "to": [{"methods": ["GET"]}]}]}
    status, body = http_json(f"{mesh.cp.info['api']}/api/v1/namespaces/default/"
                             "authorizationpolicies/reviews-viewer", "DELETE",
                             token=mesh.cp.info["token"])
    assert status == 200, body
    mesh.sync(int(body["metadata"]["resourceVersion"]))
    assert mesh.call(via="ratings")[0] == 200


DENY_MALLORY = """\
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: no-mallory
spec:
  selector:
    matchLabels:
      app: reviews
  action: DENY
  rules:
  - when:
    - key: request.headers[x-user]
      values: ["mallory"]
"""


def test_istio_deny_policy_on_a_header(mesh: IstioMesh, tmp_path: Path) -> None:
    """`meshctl apply -n default -f` of an Istio DENY policy with a header condition: mallory
    gets 403, anyone else is served; `delete -f` lets mallory in again."""
    file = tmp_path / "deny.yaml"
    file.write_text(DENY_MALLORY)
    applied = mesh.meshctl("apply", "-n", "default", "-f", str(file))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == ("authorizationpolicy.security.istio.io/no-mallory -> "
                              "authorizationpolicy.ami.mesh/no-mallory created\n")
    mesh.sync_to("authorizationpolicies", "no-mallory")
    status, body = mesh.call({"x-user": "mallory"})
    assert status == 403 and b"not_authorized" in body, (status, body)
    assert mesh.call({"x-user": "alice"})[0] == 200
    deleted = mesh.meshctl("delete", "-f", str(file))
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == ("authorizationpolicy.security.istio.io/no-mallory -> "
                              "authorizationpolicy.ami.mesh/no-mallory deleted\n")
    status, body = http_json(mesh.cp.info["api"] + "/api/v1/proxies",
                             token=mesh.cp.info["token"])
    assert status == 200, body
    mesh.sync(int(body["storeVersion"]))  # (the store's version now: after the delete)
    assert mesh.call({"x-user": "mallory"})[0] == 200


def shop(*hosts: str) -> str:
    """A VirtualService sending the traffic of each of ``hosts`` to reviews."""
    return ("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: shop\n"
            f"spec:\n  hosts: [{', '.join(hosts)}]\n  http:\n"
            "  - route:\n    - destination: {host: reviews}\n")


def store_version(mesh: IstioMesh) -> int:
    status, body = http_json(mesh.cp.info["api"] + "/api/v1/proxies",
                             token=mesh.cp.info["token"])
    assert status == 200, body
    return int(body["storeVersion"])


def route_names(mesh: IstioMesh) -> list[str]:
    status, body = http_json(mesh.cp.info["api"] + "/api/v1/routes",
                             token=mesh.cp.info["token"])
    assert status == 200, body
    return sorted(item["metadata"]["name"] for item in body["items"])


def test_a_host_dropped_from_a_virtualservice_loses_its_route(mesh: IstioMesh,
                                                              tmp_path: Path) -> None:
    """The VirtualService applied again without productpage: productpage's Route is pruned
    (diff shows it, apply says so), and productpage's traffic no longer goes to reviews (in
    Istio it stops with the host); with one host left, the Routes named for several hosts
    give way to one named as the VirtualService."""
    file = tmp_path / "shop.yaml"
    file.write_text(shop("reviews", "productpage", "ratings"))
    applied = mesh.meshctl("apply", "-f", str(file))
    assert applied.returncode == 0, applied.stderr
    mesh.sync(store_version(mesh))
    status, body = mesh.get(mesh.ratings, "productpage")  # productpage has no app: reviews'
    assert status == 200 and body.startswith(b"reviews-"), (status, body)

    file.write_text(shop("reviews", "ratings"))
    diff = mesh.meshctl("diff", "-f", str(file))
    assert diff.returncode == 1, diff.stdout + diff.stderr
    assert "+++ Route default/shop-productpage (pruned by apply)" in diff.stdout, diff.stdout
    assert "-  host: productpage" in diff.stdout, diff.stdout
    applied = mesh.meshctl("apply", "-f", str(file))
    assert applied.returncode == 0, applied.stderr
    origin = "virtualservice.networking.istio.io/shop -> route.ami.mesh/"
    assert applied.stdout.splitlines() == [f"{origin}shop-productpage pruned",
                                           f"{origin}shop-reviews unchanged",
                                           f"{origin}shop-ratings unchanged"]
    assert route_names(mesh) == ["shop-ratings", "shop-reviews"]
    mesh.sync(store_version(mesh))
    status, body = mesh.get(mesh.ratings, "productpage")
    assert status != 200 and not body.startswith(b"reviews-"), (status, body)

    file.write_text(shop("reviews"))
    applied = mesh.meshctl("apply", "-f", str(file))
    assert applied.returncode == 0, applied.stderr
    assert sorted(applied.stdout.splitlines()) == [f"{origin}shop created",
                                                   f"{origin}shop-ratings pruned",
                                                   f"{origin}shop-reviews pruned"]
    deleted = mesh.meshctl("delete", "-f", str(file))
    assert deleted.stdout == f"{origin}shop deleted\n", deleted.stdout + deleted.stderr
    assert route_names(mesh) == []


def test_an_istio_document_does_not_replace_an_ami_object_of_its_name(
        mesh: IstioMesh, tmp_path: Path) -> None:
    """A VirtualService named as an Ami Route already stored would overwrite it (one kind, one
    name, to the store): refused, naming both and what to do; the Route stays as written, and
    `delete -f` of the VirtualService does not delete it either."""
    ami_route = ("apiVersion: ami.mesh/v1alpha1\nkind: Route\nmetadata: {name: reviews}\n"
                 "spec: {host: reviews, rules: [{backends: [{subset: v1}]}]}\n")
    mesh.apply(DESTINATION_RULE, ami_route)
    file = tmp_path / "reviews.yaml"
    file.write_text(VIRTUAL_SERVICE)
    refused = mesh.meshctl("apply", "-f", str(file))
    assert refused.returncode == 1, refused.stdout
    assert refused.stderr == (
        f"error: {file} doc 1: Route default/reviews exists and is not "
        "virtualservice.networking.istio.io/reviews's translation (it was written as an Ami "
        "Route): the apply would replace it; delete it first (meshctl delete route reviews "
        "-n default) or rename the Istio document\n"), refused.stderr
    assert mesh.stored("routes", "reviews")["spec"] == {
        "host": "reviews", "rules": [{"backends": [{"subset": "v1"}]}]}
    # nor does `delete -f` of that file delete the Ami Route it never made
    kept = mesh.meshctl("delete", "-f", str(file))
    assert kept.returncode == 1, kept.stdout
    assert kept.stderr == (
        "error: route.ami.mesh/reviews is not "
        "virtualservice.networking.istio.io/reviews's translation (written as an Ami Route): "
        "not deleted; delete it by name if you mean it (meshctl delete route reviews -n "
        "default)\n"), kept.stderr
    assert mesh.stored("routes", "reviews")["spec"] == {
        "host": "reviews", "rules": [{"backends": [{"subset": "v1"}]}]}
    for plural in ("routes", "destinationpolicies"):
        status, body = http_json(f"{mesh.cp.info['api']}/api/v1/namespaces/default/{plural}/"
                                 "reviews", "DELETE", token=mesh.cp.info["token"])
        assert status == 200, body


def test_delete_f_deletes_everything_translated_from_the_document(
        mesh: IstioMesh, tmp_path: Path) -> None:
    """The file edited (productpage dropped) but not applied: `delete -f` deletes the Route of
    productpage too, as it deletes the VirtualService it came from."""
    file = tmp_path / "shop.yaml"
    file.write_text(shop("reviews", "productpage", "ratings"))
    applied = mesh.meshctl("apply", "-f", str(file))
    assert applied.returncode == 0, applied.stderr
    file.write_text(shop("reviews", "ratings"))
    deleted = mesh.meshctl("delete", "-f", str(file))
    assert deleted.returncode == 0, deleted.stderr
    origin = "virtualservice.networking.istio.io/shop -> route.ami.mesh/"
    assert deleted.stdout.splitlines() == [f"{origin}shop-reviews deleted",
                                           f"{origin}shop-ratings deleted",
                                           f"{origin}shop-productpage deleted"]
    assert route_names(mesh) == []


def test_istio_yaml_in_the_config_directory_is_edited_there(mesh: IstioMesh,
                                                            tmp_path: Path) -> None:
    """A VirtualService file in the control plane's config directory: `delete -f` and an
    `apply -f` dropping a host are refused, naming the file (they would delete nothing and
    add an Ami document beside the Istio one), and its Routes stay; editing the file prunes."""
    config = Path(mesh.cp.info["config_dir"]) / "shop.yaml"
    config.write_text(shop("reviews", "ratings"))
    wait_for(lambda: route_names(mesh) == ["shop-ratings", "shop-reviews"], 20,
             "the config directory's VirtualService")
    copy = tmp_path / "shop.yaml"
    copy.write_text(shop("reviews", "ratings"))
    refusal = ("Route default/{} is the translation of virtualservice.networking.istio.io/"
               "shop in shop.yaml, Istio YAML in the config directory, which the API does not "
               "rewrite: edit or delete that document in the file")
    deleted = mesh.meshctl("delete", "-f", str(copy))
    assert deleted.returncode == 1, deleted.stdout
    assert refusal.format("shop-reviews") in deleted.stderr, deleted.stderr
    copy.write_text(shop("reviews"))
    applied = mesh.meshctl("apply", "-f", str(copy))
    assert applied.returncode == 1, applied.stdout
    assert refusal.format("shop-ratings") in applied.stderr, applied.stderr
    assert route_names(mesh) == ["shop-ratings", "shop-reviews"]
    assert config.read_text() == shop("reviews", "ratings")
    config.write_text(shop("reviews"))
    wait_for(lambda: route_names(mesh) == ["shop"], 20, "the edited file's one Route")
    config.unlink()
    wait_for(lambda: route_names(mesh) == [], 20, "the file's Routes gone with it")


def test_a_saved_translation_applied_alone_prunes_nothing(mesh: IstioMesh,
                                                          tmp_path: Path) -> None:
    """One Route of a VirtualService saved with `meshctl get -o yaml` (annotation included)
    and applied again is an Ami document: it prunes none of its siblings."""
    file = tmp_path / "shop.yaml"
    file.write_text(shop("reviews", "ratings"))
    assert mesh.meshctl("apply", "-f", str(file)).returncode == 0
    saved = mesh.meshctl("get", "route", "shop-reviews", "-o", "yaml")
    assert saved.returncode == 0, saved.stderr
    assert "ami.mesh/translated-from: virtualservice.networking.istio.io/shop" in saved.stdout
    route = tmp_path / "route.yaml"
    route.write_text(saved.stdout)
    applied = mesh.meshctl("apply", "-f", str(route))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout == "route.ami.mesh/shop-reviews unchanged\n", applied.stdout
    assert route_names(mesh) == ["shop-ratings", "shop-reviews"]
    assert mesh.meshctl("delete", "-f", str(file)).returncode == 0
    assert route_names(mesh) == []

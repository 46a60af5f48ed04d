"""`meshctl apply` warns of fields naming a service nothing knows (Istio's IST0101), against a
real control plane with registered sidecars: the object and its field path, a `did you mean`
when a known name is close, Istio documents on their own paths; the apply goes through, and a
service registering later silences the warning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import meshbuilder
from tests.resources import document, documents, mesh_config

pytestmark = pytest.mark.timeout(180)
EXTERNAL = document("ExternalService", "partner", {
    "hosts": ["api.partner.example"], "ports": [{"number": 80, "protocol": "HTTP"}]})
UNKNOWN = ("names no known service (no sidecar of it is registered and no Route, "
           "DestinationPolicy, Gateway or ExternalService declares it)")


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[meshbuilder.Mesh]:
    with meshbuilder.Mesh(Path(tmp_path_factory.mktemp("applyrefs"))) as mesh:
        mesh.control_plane(documents(mesh_config(mtls="DISABLE"), EXTERNAL), warmup=0.0)
        mesh.service("reviews", "v1")
        mesh.service("ratings", "v1")
        mesh.wait_synced(20)
        yield mesh


def _apply(mesh: meshbuilder.Mesh, tmp: Path, *docs: str) -> tuple[list[str], list[str]]:
    """``meshctl apply -f`` of ``docs``: its stdout lines and its warning lines."""
    path = tmp / "applied.yaml"
    path.write_text(documents(*docs))
    out = mesh.meshctl("apply", "-f", str(path))
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines(), [line for line in out.stderr.splitlines()
                                     if line.startswith("warning:")]


def test_each_unknown_name_is_warned_of_with_its_field(mesh: meshbuilder.Mesh,
                                                       tmp_path: Path) -> None:
    """Typos in a Route's backend and mirror, a DestinationPolicy's host, a Gateway rule's
    destination and an AuthorizationPolicy's selector: one warning each, with the closest
    known name if one is close; everything is created; the known names (reviews, the
    ExternalService host) are not warned of."""
    applied, warnings = _apply(
        mesh, tmp_path,
        document("Route", "typos", {"host": "reviews", "rules": [
            {"backends": [{"service": "ratingz"}], "mirror": {"service": "reviewz"}}]}),
        document("Route", "partner", {"host": "api.partner.example",
                                      "rules": [{"backends": [{}]}]}),
        document("DestinationPolicy", "productpage", {"host": "productpage"}),
        document("Gateway", "edge", {"listen": "127.0.0.1:1", "rules": [
            {"destination": "reviews"}, {"hosts": ["a.example"], "destination": "detials"}]}),
        document("AuthorizationPolicy", "only", {"selector": {"service": "rating"},
                                                 "rules": [{}]}))
    assert applied == ["route.ami.mesh/typos created", "route.ami.mesh/partner created",
                       "destinationpolicy.ami.mesh/productpage created",
                       "gateway.ami.mesh/edge created",
                       "authorizationpolicy.ami.mesh/only created"], applied
    assert warnings == [
        f"warning: Route default/typos: spec.rules[0].backends[0].service 'ratingz' {UNKNOWN}; "
        "did you mean default/ratings?",
        f"warning: Route default/typos: spec.rules[0].mirror.service 'reviewz' {UNKNOWN}; "
        "did you mean default/reviews?",
        f"warning: DestinationPolicy default/productpage: spec.host 'productpage' {UNKNOWN}",
        f"warning: Gateway default/edge: spec.rules[1].destination 'detials' {UNKNOWN}",
        f"warning: AuthorizationPolicy default/only: spec.selector.service 'rating' "
        f"{UNKNOWN}; did you mean default/ratings?",
    ], warnings


def test_an_istio_document_is_warned_of_on_its_own_path(mesh: meshbuilder.Mesh,
                                                        tmp_path: Path) -> None:
    vs = ("apiVersion: networking.istio.io/v1beta1\nkind: VirtualService\n"
          "metadata: {name: vs-typo}\nspec:\n  hosts: [ratings]\n  http:\n"
          "  - match: [{headers: {end-user: {exact: jason}}}]\n"
          "    route:\n    - destination: {host: ratings}\n"
          "  - route:\n    - destination: {host: reviewz}\n")
    try:
        _, warnings = _apply(mesh, tmp_path, vs)
        assert warnings == [
            "warning: virtualservice.networking.istio.io/vs-typo (Route default/vs-typo): "
            f"spec.http[1].route[0].destination.host 'reviewz' {UNKNOWN}; "
            "did you mean default/reviews?"], warnings
    finally:  # (ratings' Route is the other tests' to make)
        mesh.meshctl("delete", "route", "vs-typo")


def test_a_service_declared_or_registered_later_is_not_warned_of(mesh: meshbuilder.Mesh,
                                                                tmp_path: Path) -> None:
    """A Route and a DestinationPolicy for a service with no sidecar yet vouch for each other
    (a Route's host declares it); a Route to `later` is warned of until a sidecar of it
    registers, then the same apply is silent."""
    _, warnings = _apply(mesh, tmp_path,
                         document("Route", "fresh", {"host": "fresh",
                                                     "rules": [{"backends": [{}]}]}),
                         document("DestinationPolicy", "fresh", {"host": "fresh"}))
    assert warnings == [], warnings
    to_later = document("Route", "to-later", {"host": "ratings", "rules": [
        {"backends": [{"service": "later"}]}]})
    _, warnings = _apply(mesh, tmp_path, to_later)
    assert warnings == [f"warning: Route default/to-later: spec.rules[0].backends[0].service "
                        f"'later' {UNKNOWN}"], warnings
    mesh.service("later", "v1")
    mesh.wait_synced(20)
    _, warnings = _apply(mesh, tmp_path, to_later)
    assert warnings == [], warnings


def test_a_route_rule_written_in_a_gateway_is_checked_too(mesh: meshbuilder.Mesh,
                                                          tmp_path: Path) -> None:
    """A Gateway rule carrying a Route rule: its backends and mirror are checked on their own
    paths, and the services it sends to count as declared for the other objects."""
    try:
        _, warnings = _apply(
            mesh, tmp_path,
            document("Gateway", "inline-edge", {"rules": [
                {"backends": [{"service": "ratingz"}], "mirror": {"service": "reviews"}},
                {"hosts": ["b.example"], "backends": [{"service": "reviews"}],
                 "mirror": {"service": "mirrorz"}}]}))
        assert warnings == [
            f"warning: Gateway default/inline-edge: spec.rules[0].backends[0].service "
            f"'ratingz' {UNKNOWN}; did you mean default/ratings?",
            f"warning: Gateway default/inline-edge: spec.rules[1].mirror.service 'mirrorz' "
            f"{UNKNOWN}"], warnings
    finally:
        mesh.meshctl("delete", "gateway", "inline-edge")

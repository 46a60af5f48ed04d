"""Istio's Gateway and the VirtualServices bound to it, as the Ami Gateways they are translated
into (meshctl.api.istio.gateway, .bound), what is refused on the Istio field, and the rules a
gateway proxy gets from them (meshctl.controlplane.gatewayrules)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from meshctl.api.gatewayhosts import bound_host_warnings
from meshctl.api.resources import Resource, validate_set
from meshctl.controlplane.gatewayrules import gateway_parts
from tests.istio_ingress import BOOKINFO_GATEWAY, HTTPBIN_GATEWAY
from tests.test_istio_yaml import errors, load, specs


def rules_for_gateway(resources: list[Resource], namespace: str = "default") -> list[Any]:
    """What a gateway proxy of ``namespace`` gets (as the control plane orders them)."""
    ordered = sorted(resources, key=lambda r: r.key)
    rules, _ = gateway_parts(ordered, namespace,
                             lambda r: json.loads(json.dumps(r.raw.get("spec") or {})))
    return rules


def test_istios_bookinfo_gateway_as_written() -> None:
    """The Istio Gateway: its servers' hosts; the VirtualService: an Ami Gateway bound to it,
    named apart from it (the demo's Ami Gateway `bookinfo` is another object), its route a
    Route rule at the gateway (productpage's mesh Route does not apply, as in Istio)."""
    resources = load(BOOKINFO_GATEWAY)
    assert [(r.kind, r.name, r.origin) for r in resources] == [
        ("Gateway", "bookinfo-gateway", "gateway.networking.istio.io/bookinfo-gateway"),
        ("Gateway", "bookinfo-gateway.bookinfo", "virtualservice.networking.istio.io/bookinfo")]
    assert resources[0].to_dict()["spec"] == {"hosts": ["*"]}
    assert resources[1].to_dict()["spec"] == {"gateway": "bookinfo-gateway", "rules": [{
        "hosts": ["*"],
        "match": [{"path": {"exact": "/productpage"}}, {"path": {"prefix": "/static"}},
                  {"path": {"exact": "/login"}}, {"path": {"exact": "/logout"}},
                  {"path": {"prefix": "/api/v1/products"}}],
        "backends": [{"service": "productpage"}]}]}
    assert validate_set(resources) == []
    assert rules_for_gateway(resources)[0]["backends"] == [{"service": "productpage"}]


def test_the_httpbin_ingress_task_as_written() -> None:
    """The Gateway of httpbin.example.com; the VirtualService's prefixes to httpbin."""
    resources = load(HTTPBIN_GATEWAY)
    assert [r.to_dict()["spec"] for r in resources] == [
        {"hosts": ["httpbin.example.com"]},
        {"gateway": "httpbin-gateway", "rules": [{
            "hosts": ["httpbin.example.com"],
            "match": [{"path": {"prefix": "/status"}}, {"path": {"prefix": "/delay"}}],
            "backends": [{"service": "httpbin"}]}]}]
    assert validate_set(resources) == []


def test_a_virtual_service_for_the_mesh_and_a_gateway_makes_both() -> None:
    """`gateways: [mesh, default/edge]`: the Route as before and an Ami Gateway."""
    found = specs("""\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      gateways: [mesh, default/edge]
      http:
      - name: canary
        route:
        - {destination: {host: reviews, subset: v1}, weight: 90}
        - {destination: {host: reviews, subset: v2}, weight: 10}
        retries: {attempts: 2, retryOn: 5xx}
    """)
    assert [(k, n) for k, n, _ in found] == [("Gateway", "edge.reviews"), ("Route", "reviews")]
    rule = found[0][2]["rules"][0]
    assert rule["backends"] == [{"service": "reviews", "subset": "v1", "weight": 90},
                                {"service": "reviews", "subset": "v2", "weight": 10}]
    assert rule["name"] == "canary" and rule["hosts"] == ["reviews"]
    assert found[1][2]["rules"][0]["backends"] == [{"subset": "v1", "weight": 90},
                                                   {"subset": "v2", "weight": 10}]


def test_https_servers_and_redirects() -> None:
    """An HTTP server with httpsRedirect: a rule redirecting plain HTTP requests to https;
    an HTTPS server with credentialName: accepted (the gateway's --gateway-cert serves)."""
    found = specs("""\
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: web}
    spec:
      selector: {istio: ingressgateway}
      servers:
      - port: {number: 80, name: http, protocol: HTTP}
        hosts: [./shop.example.com]
        tls: {httpsRedirect: true}
      - port: {number: 443, name: https, protocol: HTTPS}
        hosts: ["*/shop.example.com", "*.apps.example.com"]
        tls: {mode: SIMPLE, credentialName: shop-cert}
    """)
    assert found == [("Gateway", "web", {
        "hosts": ["shop.example.com", "*.apps.example.com"],
        "rules": [{"hosts": ["shop.example.com"], "match": [{"scheme": {"exact": "http"}}],
                   "redirect": {"scheme": "https"}}]})]


@pytest.mark.parametrize(("server", "message"), [
    ("{port: {number: 443, name: tls, protocol: TLS}, hosts: [a.example.com], "
     "tls: {mode: PASSTHROUGH}}",
     "spec.servers[0].port.protocol: not supported by Ami: a TLS server"),
    ("{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com], "
     "tls: {mode: MUTUAL, credentialName: c}}",
     "spec.servers[0].tls.mode: not supported by Ami: mode MUTUAL"),
    ("{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example.com], "
     "tls: {mode: SIMPLE, serverCertificate: /etc/cert.pem}}",
     "spec.servers[0].tls.serverCertificate: not supported by Ami"),
    ("{port: {number: 80, name: http, protocol: HTTP}, hosts: [team/a.example.com]}",
     "spec.servers[0].hosts[0]: not supported by Ami: 'team/a.example.com' admits "
     "VirtualServices of namespace team"),
    ("{port: {number: 80, name: http, protocol: HTTP}, hosts: ['x*.example.com']}",
     "spec.servers[0].hosts[0]: invalid value 'x*.example.com', expected a lower-case DNS "
     "name, *. and a DNS suffix"),
    ("{port: {number: 80, name: http, protocol: HTTP}}", "spec.servers[0].hosts: field is "
     "required"),
])
def test_istio_gateway_refusals_name_the_istio_field(server: str, message: str) -> None:
    """What an Ami gateway cannot do is refused on the Istio server's field."""
    found = errors("apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: gw}\n"
                   f"spec:\n  servers:\n  - {server}\n")
    assert any(e.startswith(f"istio.yaml doc 1: {message}") for e in found), found


@pytest.mark.parametrize(("spec", "message"), [
    ("hosts: [a.example.com]\n  gateways: [istio-system/gw]",
     "spec.gateways[0]: not supported by Ami: Gateway 'istio-system/gw' of another namespace"),
    ("hosts: [a.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: "
     "{host: ratings.other.svc.cluster.local}}]}]",
     "spec.http[0].route[0].destination.host: not supported by Ami: "
     "'ratings.other.svc.cluster.local' is service ratings of namespace other"),
    ("hosts: [a.example.com]\n  gateways: [gw]\n  http: [{route: [{destination: "
     "{host: a.example.com}}]}]",
     "spec.http[0].route[0].destination.host: not supported by Ami: destination "
     "'a.example.com' at a gateway"),
    ("hosts: ['*']\n  gateways: [mesh, gw]",
     "spec.hosts[0]: not supported by Ami: wildcard host '*'"),
    ("hosts: [a.example.com]\n  gateways: [gw]\n  http: [{match: [{gateways: [gw]}], "
     "route: [{destination: {host: web}}]}]",
     "spec.http[0].match[0].gateways: not supported by Ami: gateways in a match"),
])
def test_bound_virtual_service_refusals_name_the_istio_field(spec: str, message: str) -> None:
    """What a bound VirtualService cannot say is refused on its own field."""
    body = spec if "http:" in spec else spec + "\n  http: [{route: [{destination: {host: w}}]}]"
    found = errors("apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
                   f"metadata: {{name: vs}}\nspec:\n  {body}\n")
    assert any(e.startswith(f"istio.yaml doc 1: {message}") for e in found), found


def test_virtual_service_hosts_outside_the_gateways_are_warned_of_not_refused() -> None:
    """Accepted, as Istio does (IST0132 is a warning): the host is served nowhere, and apply's
    warning is on the VirtualService's own `spec.hosts[0]`."""
    resources = load(HTTPBIN_GATEWAY.replace('  - "httpbin.example.com"\n  gateways',
                                             '  - "other.example.com"\n  gateways'))
    assert validate_set(resources) == []
    assert rules_for_gateway(resources) == []
    assert bound_host_warnings(resources[1], resources[0]) == [
        "virtualservice.networking.istio.io/httpbin (Gateway default/httpbin-gateway.httpbin): "
        "spec.hosts[0]: host other.example.com is not among the hosts of Gateway "
        "httpbin-gateway (httpbin.example.com): that gateway serves it no request (Istio's "
        "IST0132)"]


def test_a_gateway_proxy_gets_bound_rules_by_host_specificity() -> None:
    """Written Gateways' rules first; then the bound ones, one per host the Gateway serves of
    them (`*` within `*.example.com` is `*.example.com`), exact hosts first, then the longest
    suffix, then `*`, then by Gateway name; rules bound to no existing Gateway are left out."""
    resources = load("""\
    apiVersion: networking.istio.io/v1
    kind: Gateway
    metadata: {name: gw}
    spec:
      servers:
      - port: {number: 80, name: http, protocol: HTTP}
        hosts: ["*.example.com", "shop.example.org"]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: any}
    spec:
      hosts: ["*"]
      gateways: [gw]
      http: [{route: [{destination: {host: fallback}}]}]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: blog}
    spec:
      hosts: ["*.blog.example.com", "blog.example.com"]
      gateways: [gw]
      http: [{route: [{destination: {host: blog}}]}]
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: lost}
    spec:
      hosts: [a.example.com]
      gateways: [missing]
      http: [{route: [{destination: {host: lost}}]}]
    ---
    apiVersion: ami.mesh/v1alpha1
    kind: Gateway
    metadata: {name: zz-written}
    spec:
      rules: [{match: [{path: {prefix: /admin}}], destination: admin}]
    """)
    assert validate_set(resources) == []
    assert [(r.get("hosts"), r.get("destination") or r["backends"][0]["service"])
            for r in rules_for_gateway(resources)] == [
        (None, "admin"),
        (["shop.example.org"], "fallback"),  # (exact hosts: by Gateway name, gw.any first)
        (["blog.example.com"], "blog"),
        (["*.blog.example.com"], "blog"),
        (["*.example.com"], "fallback")]
    assert rules_for_gateway(resources, "other") == []


def test_an_ami_gateway_without_listen_and_with_listen_claims() -> None:
    """`listen` is optional; two Gateways giving the same one still clash."""
    gateway = ("apiVersion: ami.mesh/v1alpha1\nkind: Gateway\nmetadata: {{name: {name}}}\n"
               "spec:\n  {listen}rules: [{{destination: web}}]\n")
    resources = load("---\n".join([gateway.format(name="a", listen=""),
                                   gateway.format(name="b", listen=""),
                                   gateway.format(name="c", listen="listen: 0.0.0.0:80\n  "),
                                   gateway.format(name="d", listen="listen: 0.0.0.0:80\n  ")]))
    assert [str(i) for i in validate_set(resources)] == [
        "istio.yaml doc 4: spec.listen: listen address already used by a Gateway (see Gateway "
        "default/c in istio.yaml doc 3)"]


def test_subsets_at_the_gateway_are_checked_on_the_istio_field() -> None:
    """A bound route's subsets must be defined, as a Route's (on the Istio path)."""
    resources = load("""\
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews.example.com]
      gateways: [gw]
      http:
      - route:
        - {destination: {host: reviews, subset: v1}, weight: 50}
        - {destination: {host: reviews, subset: v2}, weight: 50}
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec:
      host: reviews
      subsets: [{name: v1, labels: {version: v1}}]
    """)
    assert [str(i) for i in validate_set(resources)] == [
        "istio.yaml doc 1: spec.http[0].route[1].destination.subset: unknown subset 'v2' for "
        "host reviews (known: v1)"]


def test_a_gateway_bound_to_itself_is_refused() -> None:
    """An Ami Gateway's `gateway` naming its own name binds nothing: refused on the field."""
    found = [str(i) for i in validate_set(load(
        "apiVersion: ami.mesh/v1alpha1\nkind: Gateway\nmetadata: {name: edge}\n"
        "spec:\n  gateway: edge\n  rules: [{destination: web}]\n"))]
    assert found == ["istio.yaml doc 1: spec.gateway: a Gateway cannot be bound to itself: "
                     "name the Gateway whose hosts its rules serve, or remove gateway"], found


def test_a_gateway_bound_to_a_bound_gateway_is_refused() -> None:
    """A chain (edge -> inner -> outer) binds edge to a Gateway serving no hosts of its own,
    which would serve its rules for every host: refused, naming the one to bind to."""
    found = [str(i) for i in validate_set(load(
        "apiVersion: ami.mesh/v1alpha1\nkind: Gateway\nmetadata: {name: outer}\n"
        "spec:\n  hosts: [shop.example.com]\n---\n"
        "apiVersion: ami.mesh/v1alpha1\nkind: Gateway\nmetadata: {name: inner}\n"
        "spec:\n  gateway: outer\n  rules: [{destination: web}]\n---\n"
        "apiVersion: ami.mesh/v1alpha1\nkind: Gateway\nmetadata: {name: edge}\n"
        "spec:\n  gateway: inner\n  rules: [{destination: web}]\n"))]
    assert found == ["istio.yaml doc 3: spec.gateway: Gateway inner is itself bound to outer: "
                     "bind to a Gateway that serves hosts of its own (outer?)"], found

"""Istio's ServiceEntry, Sidecar and Telemetry as the Ami documents they are translated into
(ExternalService, Sidecar, Telemetry), and what is refused, on the Istio document's field paths
(meshctl.api.istio). The documents are those of Istio's docs, as written."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from meshctl.api.resources import validate_set
from tests.test_istio_yaml import errors, load


def specs(text: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(kind, namespace, name, spec) of each Ami document the text translates to."""
    return [(r.kind, r.namespace, r.name, r.to_dict()["spec"]) for r in load(text)]


# -- ServiceEntry ------------------------------------------------------------------------------
# tasks/traffic-management/egress/egress-control: httpbin.org and www.google.com
EGRESS_CONTROL = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: httpbin-ext
spec:
  hosts:
  - httpbin.org
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: DNS
  location: MESH_EXTERNAL
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: google
spec:
  hosts:
  - www.google.com
  ports:
  - number: 443
    name: https
    protocol: HTTPS
  resolution: DNS
  location: MESH_EXTERNAL
"""
# the ServiceEntry reference: several hosts over TLS, a wildcard, protocols by port name
REFERENCE = """\
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: external-svc-https
spec:
  hosts:
  - api.dropboxapi.com
  - www.googleapis.com
  - api.facebook.com
  location: MESH_EXTERNAL
  ports:
  - number: 443
    name: https
    protocol: TLS
  resolution: DNS
---
apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata:
  name: external-svc-wildcard-example
spec:
  hosts:
  - "*.bar.com"
  location: MESH_EXTERNAL
  ports:
  - number: 80
    name: http
    protocol: HTTP
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: by-port-name
  namespace: shop
spec:
  hosts: [grpc.partner.example]
  ports:
  - {number: 50051, name: grpc-api}
  - {number: 8080, name: http2, targetPort: 443}
  - {number: 27017, name: mongo, protocol: Mongo}
"""
# tasks/traffic-management/egress/egress-tls-origination's ports; fixed addresses (STATIC)
ORIGINATION = """\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: edition-cnn-com
spec:
  hosts:
  - edition.cnn.com
  ports:
  - number: 80
    name: http-port
    protocol: HTTP
    targetPort: 443
  - number: 443
    name: https-port
    protocol: HTTPS
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: billing
spec:
  hosts: [billing.partner.example]
  ports: [{number: 8080, name: http, protocol: HTTP}]
  resolution: STATIC
  exportTo: ["*"]
  endpoints:
  - address: 203.0.113.7
  - address: 2001:db8::7
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: names
spec:
  hosts: [foo.bar.com]
  location: MESH_EXTERNAL
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints:
  - address: us.foo.bar.com
    ports:
      http: 8080
  - address: uk.foo.bar.com
    ports:
      http: 8080
"""
SERVICE_ENTRIES = [
    (EGRESS_CONTROL, [
        ("ExternalService", "default", "httpbin-ext",
         {"hosts": ["httpbin.org"], "ports": [{"number": 80, "protocol": "HTTP"}]}),
        ("ExternalService", "default", "google",
         {"hosts": ["www.google.com"], "ports": [{"number": 443, "protocol": "HTTPS"}]})]),
    (REFERENCE, [
        ("ExternalService", "default", "external-svc-https",
         {"hosts": ["api.dropboxapi.com", "www.googleapis.com", "api.facebook.com"],
          "ports": [{"number": 443, "protocol": "TLS"}]}),
        ("ExternalService", "default", "external-svc-wildcard-example",
         {"hosts": ["*.bar.com"], "ports": [{"number": 80, "protocol": "HTTP"}]}),
        # no protocol: the name's prefix (Istio's rule); MONGO is proxied as TCP
        ("ExternalService", "shop", "by-port-name",
         {"hosts": ["grpc.partner.example"],
          "ports": [{"number": 50051, "protocol": "GRPC"},
                    {"number": 8080, "protocol": "HTTP2", "targetPort": 443},
                    {"number": 27017, "protocol": "TCP"}]})]),
    (ORIGINATION, [
        ("ExternalService", "default", "edition-cnn-com",
         {"hosts": ["edition.cnn.com"],
          "ports": [{"number": 80, "protocol": "HTTP", "targetPort": 443},
                    {"number": 443, "protocol": "HTTPS"}]}),
        ("ExternalService", "default", "billing",
         {"hosts": ["billing.partner.example"], "ports": [{"number": 8080, "protocol": "HTTP"}],
          "endpoints": [{"address": "203.0.113.7"}, {"address": "2001:db8::7"}]}),
        # the endpoints' own port (all the same): the port's targetPort
        ("ExternalService", "default", "names",
         {"hosts": ["foo.bar.com"],
          "ports": [{"number": 80, "protocol": "HTTP", "targetPort": 8080}],
          "endpoints": [{"address": "us.foo.bar.com"}, {"address": "uk.foo.bar.com"}]})]),
]


@pytest.mark.parametrize(("istio", "ami"), SERVICE_ENTRIES,
                         ids=["egress-control", "reference", "tls-origination-static-dns"])
def test_service_entry_becomes_an_external_service(istio: str, ami: list[Any]) -> None:
    assert specs(istio) == ami


def test_an_empty_export_to_is_every_namespace_and_one_endpoint_round_robin_is_kept() -> None:
    """Istio reads `exportTo: []` as its default, every namespace; DNS_ROUND_ROBIN with one
    endpoint (the reference's form) is that endpoint."""
    assert specs("""\
    apiVersion: networking.istio.io/v1
    kind: ServiceEntry
    metadata: {name: rr}
    spec:
      hosts: [a.example.com]
      ports: [{number: 80, name: http, protocol: HTTP}]
      resolution: DNS_ROUND_ROBIN
      exportTo: []
      endpoints: [{address: lb.a.example.com}]
    """) == [("ExternalService", "default", "rr",
              {"hosts": ["a.example.com"], "ports": [{"number": 80, "protocol": "HTTP"}],
               "endpoints": [{"address": "lb.a.example.com"}]})]


def test_an_empty_export_to_is_every_namespace_on_every_kind() -> None:
    """`exportTo: []` is Istio's default (every namespace) on a VirtualService and a
    DestinationRule too, as `["*"]`."""
    assert [(r.kind, r.name) for r in load("""\
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: reviews}
    spec: {host: reviews, exportTo: []}
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: reviews}
    spec:
      hosts: [reviews]
      exportTo: []
      http: [{route: [{destination: {host: reviews}}]}]
    """)] == [("DestinationPolicy", "reviews"), ("Route", "reviews")]


def test_the_translation_says_where_it_came_from() -> None:
    (es,) = load(EGRESS_CONTROL.split("---")[0])
    assert es.origin == "serviceentry.networking.istio.io/httpbin-ext"
    assert es.annotations == {
        "ami.mesh/translated-from": "serviceentry.networking.istio.io/httpbin-ext"}


def test_rules_for_a_service_entry_host_are_checked_as_for_an_external_service() -> None:
    """A DestinationRule and a VirtualService of the ServiceEntry's host translate and check
    together (the VirtualService's subset is the DestinationRule's)."""
    resources = load(EGRESS_CONTROL.split("---")[0] + textwrap.dedent("""\
    ---
    apiVersion: networking.istio.io/v1
    kind: DestinationRule
    metadata: {name: httpbin-ext}
    spec:
      host: httpbin.org
      trafficPolicy: {connectionPool: {tcp: {connectTimeout: 1s}}}
    ---
    apiVersion: networking.istio.io/v1
    kind: VirtualService
    metadata: {name: httpbin-ext}
    spec:
      hosts: [httpbin.org]
      http:
      - timeout: 3s
        route: [{destination: {host: httpbin.org}}]
    """))
    assert [(r.kind, r.to_dict()["spec"].get("host")) for r in resources] == [
        ("ExternalService", None), ("DestinationPolicy", "httpbin.org"),
        ("Route", "httpbin.org")]
    assert validate_set(resources) == []


SE_REFUSALS = [
    # the reference's MONGO cluster: an internal service behind virtual IPs
    ("""\
    hosts: [mymongodb.somedomain]
    addresses: [192.192.192.192/24]
    ports: [{number: 27018, name: mongodb, protocol: MONGO}]
    location: MESH_INTERNAL
    resolution: STATIC
    endpoints: [{address: 2.2.2.2}, {address: 3.3.3.3}]""", [
        "spec.location: not supported by Ami: MESH_INTERNAL; a mesh service is one whose "
        "sidecars register with the control plane (meshctl sidecar --service), and an "
        "ExternalService is always outside the mesh (MESH_EXTERNAL: plaintext or the TLS a "
        "DestinationRule originates, never the mesh's mTLS)",
        "spec.addresses: not supported by Ami: addresses (virtual IPs); apps reach an outside "
        "host through their sidecar by its name, so no address is captured"]),
    # the reference's DNS endpoints, each on a port of its own
    ("""\
    hosts: [foo.bar.com]
    ports: [{number: 80, name: http, protocol: HTTP}]
    resolution: DNS
    endpoints:
    - {address: us.foo.bar.com, ports: {http: 8080}}
    - {address: uk.foo.bar.com, ports: {http: 9080}, labels: {region: uk}, weight: 2}""", [
        "spec.endpoints[1].labels: not supported by Ami: endpoint labels; an "
        "ExternalService's endpoints are one set (no subsets)",
        "spec.endpoints[1].weight: not supported by Ami: endpoint weights; the endpoints are "
        "balanced by the host's DestinationRule",
        "spec.endpoints: not supported by Ami: the endpoints of port 'http' on different "
        "ports (8080, 9080); Ami reaches every endpoint of a port on one targetPort: declare "
        "them in ServiceEntries of their own"]),
    ("""\
    hosts: [foo.bar.com]
    ports: [{number: 80, name: http, protocol: HTTP}, {number: 81, protocol: HTTP}]
    resolution: DNS
    endpoints:
    - {address: us.foo.bar.com, ports: {http: 8080}}
    - {address: uk.foo.bar.com, ports: {https: 8443, http: [1]}}""", [
        "spec.endpoints[1].ports.https: no port is named 'https' (known: http)",
        "spec.endpoints[1].ports.http: expected a port number, got a list"]),
    ("""\
    hosts: [a.example.com]
    ports: [{number: 80, name: web}]
    workloadSelector: {labels: {app: vm}}
    exportTo: ["."]
    subjectAltNames: ["spiffe://a/b"]""", [
        "spec.ports[0].protocol: field is required: Ami does not detect a port's protocol "
        "(give protocol, or a name such as http-api, Istio's <protocol>[-<suffix>])",
        "spec.workloadSelector: not supported by Ami: workloadSelector; an ExternalService's "
        "endpoints are outside hosts, never mesh workloads",
        "spec.subjectAltNames: not supported by Ami: subjectAltNames (they verify mesh "
        "workloads); a DestinationRule's tls.sni names the outside host to verify",
        "spec.exportTo: not supported by Ami: exportTo other than [\"*\"]; an "
        "ExternalService's hosts are known in every namespace (a Sidecar's egress hosts "
        "scope them)"]),
    ("""\
    hosts: [a.example.com]
    ports: [{number: 80, protocol: HTTP}]
    resolution: STATIC
    endpoints: [{address: a.example.net}]""", [
        "spec.endpoints[0].address: resolution STATIC takes IP addresses, got 'a.example.net' "
        "(a DNS name: resolution DNS)"]),
    ("""\
    hosts: [a.example.com]
    ports: [{number: 80, protocol: HTTP}]
    resolution: STATIC""", ["spec.endpoints: resolution STATIC needs endpoints (their IP "
                            "addresses)"]),
    ("""\
    hosts: [a.example.com]
    ports: [{number: 80, protocol: HTTP}]
    endpoints: [{address: 192.0.2.1}]""", [
        "spec.endpoints: endpoints with resolution NONE (Istio refuses them too): use "
        "resolution STATIC for IP addresses, DNS for names"]),
    ("""\
    hosts: [a.example.com]
    ports: [{number: 80, protocol: HTTP}]
    resolution: SOMETIMES
    location: OUTSIDE""", [
        "spec.location: unknown value 'OUTSIDE', expected MESH_EXTERNAL",
        "spec.resolution: unknown value 'SOMETIMES', expected one of NONE, STATIC, DNS, "
        "DNS_ROUND_ROBIN, DYNAMIC_DNS"]),
    # a single-label host is a mesh service's name to its callers: Ami's service would win
    ("""\
    hosts: [reviews, api.example.com]
    ports: [{number: 9080, name: http, protocol: HTTP}]
    resolution: DNS""", [
        "spec.hosts[0]: not supported by Ami: a single-label host ('reviews'); it names a mesh "
        "service to the apps that call it, and a mesh service of that name wins over an "
        "ExternalService host: give the outside host's full DNS name"]),
    # DNS_ROUND_ROBIN reaches one name (Envoy's LOGICAL_DNS): not balanced over several
    ("""\
    hosts: [a.example.com]
    ports: [{number: 80, protocol: HTTP}]
    resolution: DNS_ROUND_ROBIN
    endpoints: [{address: us.a.example.com}, {address: uk.a.example.com}]""", [
        "spec.endpoints: resolution DNS_ROUND_ROBIN takes at most one endpoint (Envoy's "
        "LOGICAL_DNS, which Istio makes of it, reaches one name); resolution DNS balances "
        "over several"]),
    # what Ami's ExternalService finds, on the Istio fields
    ("""\
    hosts: [reviews.default.svc.cluster.local, "*.bar.com"]
    ports: [{number: 53, name: dns, protocol: UDP}]
    resolution: DNS
    endpoints: [{address: 192.0.2.1}]""", [
        "spec.ports[0].protocol: unknown value 'UDP', expected one of HTTP, HTTP2, GRPC, "
        "HTTPS, TLS, TCP",
        "spec.hosts[0]: reviews.default.svc.cluster.local is a mesh service name "
        "(name.namespace.svc...), not an outside host: mesh services are reached over mTLS by "
        "their own name",
        "spec.hosts[1]: a wildcard host (*.bar.com) cannot have endpoints: the requested name "
        "is resolved when connecting; declare it in an ExternalService of its own"]),
]


@pytest.mark.parametrize(("spec", "messages"), SE_REFUSALS)
def test_service_entry_refusals(spec: str, messages: list[str]) -> None:
    found = errors("apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"
                   "metadata: {name: se}\nspec:\n" + textwrap.indent(textwrap.dedent(spec), "  "))
    assert found == [f"istio.yaml doc 1: {m}" for m in messages]


def test_two_service_entries_of_one_host_are_refused_on_the_istio_field() -> None:
    issues = [str(i) for i in validate_set(load(EGRESS_CONTROL + "---\n" + EGRESS_CONTROL
                                                .split("---")[0].replace("httpbin-ext",
                                                                         "again")))]
    assert len(issues) == 1 and issues[0].startswith("istio.yaml doc 3: spec.hosts[0]: "), issues
    assert "httpbin.org" in issues[0], issues


# -- Sidecar -----------------------------------------------------------------------------------
# the Sidecar reference: a namespace's default, and a workload's with outboundTrafficPolicy
SIDECARS = """\
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: default
  namespace: prod-us1
spec:
  egress:
  - hosts:
    - "prod-us1/*"
    - "prod-apis/*"
    - "istio-system/*"
---
apiVersion: networking.istio.io/v1beta1
kind: Sidecar
metadata:
  name: ratings
  namespace: prod-us1
spec:
  workloadSelector:
    labels:
      app: ratings
  outboundTrafficPolicy:
    mode: REGISTRY_ONLY
  egress:
  - hosts:
    - "./*"
    - "*/*.partner.example"
    - "~/*"
---
apiVersion: networking.istio.io/v1alpha3
kind: Sidecar
metadata:
  name: batch
  namespace: shop
spec:
  workloadSelector:
    labels: {app: batch, version: v2}
  outboundTrafficPolicy: {mode: ALLOW_ANY}
---
apiVersion: networking.istio.io/v1
kind: Sidecar
metadata:
  name: strict
  namespace: shop
spec:
  outboundTrafficPolicy: {}
"""


def test_sidecar_becomes_an_ami_sidecar() -> None:
    assert specs(SIDECARS) == [
        ("Sidecar", "prod-us1", "default",
         {"egress": [{"hosts": ["prod-us1/*", "prod-apis/*", "istio-system/*"]}]}),
        ("Sidecar", "prod-us1", "ratings",
         {"workloadSelector": {"labels": {"app": "ratings"}},
          "egress": [{"hosts": ["./*", "*/*.partner.example", "~/*"]}],
          "outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}}),
        ("Sidecar", "shop", "batch",
         {"workloadSelector": {"labels": {"app": "batch", "version": "v2"}},
          "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}}),
        # no mode: Istio's enum zero
        ("Sidecar", "shop", "strict", {"outboundTrafficPolicy": {"mode": "REGISTRY_ONLY"}})]
    assert load(SIDECARS)[0].origin == "sidecar.networking.istio.io/default"


SIDECAR_REFUSALS = [
    # the reference's ingress and bound egress listener
    ("""\
    workloadSelector: {labels: {app: productpage}}
    ingress:
    - port: {number: 9080, protocol: HTTP, name: somename}
      defaultEndpoint: unix:///var/run/someuds.sock
    egress:
    - port: {number: 9080, protocol: HTTP, name: egresshttp}
      bind: 127.0.0.1
      captureMode: NONE
      hosts: ["prod-us1/*"]""", [
        "spec.egress[0].port: Istio's port is not supported: Ami sidecars have one outbound "
        "listener, which every egress entry shares",
        "spec.egress[0].bind: Istio's bind is not supported: Ami sidecars have one outbound "
        "listener, which every egress entry shares",
        "spec.egress[0].captureMode: Istio's captureMode is not supported: Ami sidecars have "
        "one outbound listener, which every egress entry shares",
        "spec.ingress: Istio's ingress is not supported: the inbound side is the sidecar's "
        "--inbound and --app, not a Sidecar's"]),
    ("""\
    outboundTrafficPolicy: {mode: ALLOW_ANY, egressProxy: {host: egress, port: {number: 80}}}
    egress: [{hosts: ["prod/*", "a/b/c"]}]""", [
        "spec.outboundTrafficPolicy.egressProxy: not supported by Ami: egressProxy; under "
        "ALLOW_ANY the sidecar reaches an unknown host directly"]),
    ("""\
    egress: [{hosts: ["prod/*", "a/b/c"]}]
    outboundTrafficPolicy: {mode: SOMETIMES}""", [
        "spec.egress[0].hosts[1]: expected 'namespace/dnsName': namespace '.', '*', '~' or a "
        "DNS-1123 label; dnsName '*', '*.' and a DNS suffix, or a DNS name (e.g. './*', 'b/*', "
        "'*/api.b'), got 'a/b/c'",
        "spec.outboundTrafficPolicy.mode: unknown value 'SOMETIMES', expected one of "
        "REGISTRY_ONLY, ALLOW_ANY"]),
]


@pytest.mark.parametrize(("spec", "messages"), SIDECAR_REFUSALS)
def test_sidecar_refusals(spec: str, messages: list[str]) -> None:
    found = errors("apiVersion: networking.istio.io/v1\nkind: Sidecar\n"
                   "metadata: {name: s}\nspec:\n" + textwrap.indent(textwrap.dedent(spec), "  "))
    assert found == [f"istio.yaml doc 1: {m}" for m in messages]


def test_a_sidecar_in_istios_root_namespace_is_refused() -> None:
    """The reference's mesh-wide default (`istio-system`): Ami has no root namespace."""
    found = errors(SIDECARS.split("---")[0].replace("prod-us1\nspec", "istio-system\nspec"))
    assert found == [
        "istio.yaml doc 1: metadata.namespace: a Sidecar in istio-system, Istio's root "
        "namespace, is mesh-wide in Istio; Ami has no root namespace: give each namespace a "
        "Sidecar of its own (Istio's default Sidecar is a namespace-wide one in each "
        "namespace)"]


# -- Telemetry ---------------------------------------------------------------------------------
# tasks/observability/logs/access-log and telemetry-api: Envoy's log on, filtered, off; sampling
TELEMETRIES = """\
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: namespace-logging
  namespace: foo
spec:
  accessLogging:
  - providers:
    - name: envoy
    filter:
      expression: response.code >= 400
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata:
  name: disable-sidecar-logging
  namespace: default
spec:
  selector:
    matchLabels:
      app: helloworld
  accessLogging:
  - providers:
    - name: envoy
    disabled: true
---
apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata:
  name: foo-tracing
  namespace: foo
spec:
  selector:
    matchLabels: {app: reviews}
  tracing:
  - randomSamplingPercentage: 10.00
    disableSpanReporting: false
    match: {mode: CLIENT_AND_SERVER}
"""


def test_telemetry_becomes_an_ami_telemetry() -> None:
    assert specs(TELEMETRIES) == [
        ("Telemetry", "foo", "namespace-logging",
         {"accessLogging": [{"filter": {"expression": "response.code >= 400"}}]}),
        ("Telemetry", "default", "disable-sidecar-logging",
         {"selector": {"matchLabels": {"app": "helloworld"}},
          "accessLogging": [{"disabled": True}]}),
        ("Telemetry", "foo", "foo-tracing",
         {"selector": {"matchLabels": {"app": "reviews"}},
          "tracing": [{"randomSamplingPercentage": 10.0, "disableSpanReporting": False}]})]
    assert load(TELEMETRIES)[0].origin == "telemetry.telemetry.istio.io/namespace-logging"


TELEMETRY_REFUSALS = [
    # telemetry-api's tracing and metrics examples
    ("""\
    tracing:
    - providers: [{name: otel-tracing}]
      randomSamplingPercentage: 100
      customTags: {my_new_foo_tag: {literal: {value: foo}}}
    metrics:
    - providers: [{name: prometheus}]
      overrides: [{match: {metric: REQUEST_COUNT}, disabled: true}]""", [
        "spec.metrics: not supported by Ami: metrics overrides; Ami's metrics are one fixed "
        "set (docs/observability.md): none is disabled, renamed or tagged per workload",
        "spec.tracing[0].providers: not supported by Ami: tracing providers; Ami has one "
        "tracer, not named: OTLP to MeshConfig's tracing.otlpEndpoint (leave providers out)",
        "spec.tracing[0].customTags: not supported by Ami: customTags; Ami's spans carry a "
        "fixed set of attributes"]),
    ("""\
    targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
    accessLogging:
    - providers: [{name: otel}, {name: envoy}]
      match: {mode: SERVER}""", [
        "spec.targetRefs: not supported by Ami: a Telemetry selects workloads by "
        "selector.matchLabels",
        "spec.accessLogging[0].match.mode: not supported by Ami: mode 'SERVER'; an entry is "
        "about both sides of a call (CLIENT_AND_SERVER, Istio's default)",
        "spec.accessLogging[0].providers[0]: not supported by Ami: access log provider "
        "'otel'; Ami has one, envoy (Istio's built-in: JSON lines on the proxy's stdout)"]),
    # what Ami's Telemetry finds, on the Istio fields
    ("""\
    selector: {matchLabels: {}}
    accessLogging:
    - filter: {expression: 'response.code >= "400"'}
    - disabled: true
    tracing: [{randomSamplingPercentage: 150}]""", [
        "spec.selector.matchLabels: at least one label is required (leave selector out for "
        "the whole namespace)",
        "spec.accessLogging[0].filter.expression: column 18: cannot compare an integer with a "
        "string in 'response.code >= \"400\"'",
        "spec.tracing[0].randomSamplingPercentage: must be between 0 and 100, got 150"]),
]


@pytest.mark.parametrize(("spec", "messages"), TELEMETRY_REFUSALS)
def test_telemetry_refusals(spec: str, messages: list[str]) -> None:
    found = errors("apiVersion: telemetry.istio.io/v1\nkind: Telemetry\n"
                   "metadata: {name: t}\nspec:\n" + textwrap.indent(textwrap.dedent(spec), "  "))
    assert found == [f"istio.yaml doc 1: {m}" for m in messages]


def test_telemetry_in_istios_root_namespace_and_other_versions_are_refused() -> None:
    found = errors("""\
    apiVersion: telemetry.istio.io/v1
    kind: Telemetry
    metadata: {name: mesh-default, namespace: istio-system}
    spec:
      accessLogging: [{providers: [{name: envoy}]}]
    ---
    apiVersion: telemetry.istio.io/v1beta1
    kind: Telemetry
    metadata: {name: t}
    spec: {}
    """)
    assert found == [
        "istio.yaml doc 1: metadata.namespace: a Telemetry in istio-system, Istio's root "
        "namespace, is mesh-wide in Istio; Ami has no root namespace: MeshConfig's accessLog "
        "and tracing.sampling are Ami's mesh-wide level",
        "istio.yaml doc 2: apiVersion: unsupported 'telemetry.istio.io/v1beta1' for kind "
        "Telemetry, expected telemetry.istio.io/v1 or telemetry.istio.io/v1alpha1"]


def test_checks_across_documents_name_the_istio_fields() -> None:
    """Two namespace-wide Sidecars (or Telemetries) of one namespace: the second is refused
    where its Istio document is written."""
    found = [str(i) for i in validate_set(load("""\
    apiVersion: networking.istio.io/v1
    kind: Sidecar
    metadata: {name: a, namespace: shop}
    spec:
      egress: [{hosts: ["./*"]}]
    ---
    apiVersion: networking.istio.io/v1
    kind: Sidecar
    metadata: {name: b, namespace: shop}
    spec:
      egress: [{hosts: ["./*"]}]
    ---
    apiVersion: telemetry.istio.io/v1
    kind: Telemetry
    metadata: {name: a, namespace: shop}
    spec:
      accessLogging: [{providers: [{name: envoy}]}]
    ---
    apiVersion: telemetry.istio.io/v1
    kind: Telemetry
    metadata: {name: b, namespace: shop}
    spec:
      tracing: [{randomSamplingPercentage: 5}]
    """))]
    assert found == [
        "istio.yaml doc 2: spec: namespace shop already has a namespace-wide Sidecar (one "
        "without workloadSelector) (see Sidecar shop/a, translated from "
            "sidecar.networking.istio.io/a in istio.yaml doc 1)",
        "istio.yaml doc 4: spec.selector: namespace shop already has a namespace-wide "
        "Telemetry (one without selector) (see Telemetry shop/a, translated from "
            "telemetry.telemetry.istio.io/a in istio.yaml doc 3)"]

"""ExternalService documents: the parser's own checks (those JSON Schema cannot say) and the
checks across documents, with file, document and field path in every message."""

from __future__ import annotations

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.external import ExternalPort, ExternalServiceSpec
from meshctl.api.policy import ClientTLS
from meshctl.api.resources import load_documents, validate_set

HEAD = "apiVersion: ami.mesh/v1alpha1\nkind: ExternalService\nmetadata: {name: %s}\n"


def issues_of(text: str) -> list[str]:
    try:
        resources = load_documents(text, "es.yaml")
    except ValidationError as err:
        return [str(i) for i in err.issues]
    return [str(i) for i in validate_set(resources)]


def test_a_full_document_parses() -> None:
    [r] = load_documents(HEAD % "github" + "spec:\n  hosts: [api.github.com]\n"
                         "  ports: [{number: 443, protocol: TLS}, {number: 80, protocol: HTTP}]\n"
                         "  endpoints: [{address: 203.0.113.7}]\n", "es.yaml")
    assert r.spec == ExternalServiceSpec(("api.github.com",), (
        ExternalPort(443, "TLS"), ExternalPort(80, "HTTP")), ("203.0.113.7",))
    assert r.spec.ports[0].tunnel and not r.spec.ports[1].tunnel


@pytest.mark.parametrize(("spec", "expected"), [
    ("{hosts: [a.example, a.example], ports: [{number: 80, protocol: HTTP}]}",
     ["es.yaml doc 1: spec.hosts[1]: duplicate host a.example"]),
    ("{hosts: [a.example], ports: [{number: 80, protocol: HTTP}, {number: 80, protocol: TLS}]}",
     ["es.yaml doc 1: spec.ports[1].number: duplicate port 80"]),
    ("{hosts: [a.example], ports: [{number: 80, protocol: HTTP}],"
     " endpoints: [{address: 10.0.0.1}, {address: 10.0.0.1}]}",
     ["es.yaml doc 1: spec.endpoints[1].address: duplicate endpoint 10.0.0.1"]),
    ("{hosts: ['*.example.com'], ports: [{number: 443, protocol: TLS}],"
     " endpoints: [{address: 10.0.0.1}]}",
     ["es.yaml doc 1: spec.hosts[0]: a wildcard host (*.example.com) cannot have endpoints: "
      "the requested name is resolved when connecting; declare it in an ExternalService of "
      "its own"]),
    ("{hosts: [a.example], ports: [{number: 80, protocol: HTTP}],"
     " endpoints: [{address: 'fe80::1::2'}]}",
     ["es.yaml doc 1: spec.endpoints[0].address: invalid value 'fe80::1::2', expected an IP "
      "address or a DNS name"]),
    ("{hosts: [A.example], ports: [{number: 80, protocl: HTTP}]}",
     ["es.yaml doc 1: spec.hosts[0]: invalid value 'A.example', expected a lower-case DNS name "
      "like api.example.com, or *. and a DNS suffix",
      "es.yaml doc 1: spec.ports[0].protocol: field is required",
      "es.yaml doc 1: spec.ports[0].protocl: unknown field, did you mean 'protocol'?"]),
    ("{hosts: [reviews.default.svc.cluster.local, reviews.default.svc, '*.svc.cluster.local',"
     " '*.default.svc.cluster.local', svc.example.com, reviews.svc.example.com],"
     " ports: [{number: 80, protocol: HTTP}]}",
     [f"es.yaml doc 1: spec.hosts[{i}]: {host} is a mesh service name (name.namespace.svc...), "
      "not an outside host: mesh services are reached over mTLS by their own name"
      for i, host in enumerate(["reviews.default.svc.cluster.local", "reviews.default.svc",
                                "*.svc.cluster.local", "*.default.svc.cluster.local"])]),
])
def test_invalid_documents_name_the_field(spec: str, expected: list[str]) -> None:
    assert issues_of(HEAD % "a" + f"spec: {spec}\n") == expected


def test_target_port_and_tls_origination_parse() -> None:
    """An HTTP port reached on another port (`targetPort`), with the host's DestinationPolicy
    asking the sidecar to originate TLS there (Istio's egress TLS origination)."""
    [es, dp] = load_documents(
        HEAD % "github" + "spec:\n  hosts: [api.github.com]\n"
        "  ports: [{number: 80, protocol: HTTP, targetPort: 443}]\n---\n"
        "apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: gh}\n"
        "spec: {host: api.github.com, tls: {mode: SIMPLE, sni: api.github.com,"
        " caCertificates: /etc/ssl/certs/ca-certificates.crt}}\n", "es.yaml")
    assert es.spec.ports == (ExternalPort(80, "HTTP", 443),)
    assert dp.spec.policy.tls == ClientTLS("SIMPLE", "api.github.com",
                                           "/etc/ssl/certs/ca-certificates.crt")


def test_http2_and_grpc_ports_parse() -> None:
    """`HTTP2` and `GRPC` ports (requests proxied as HTTP/2), and a clear error for a
    protocol spelt otherwise."""
    [es] = load_documents(
        HEAD % "grpc-api" + "spec:\n  hosts: [grpc.example.com]\n"
        "  ports: [{number: 50051, protocol: GRPC}, {number: 8080, protocol: HTTP2,"
        " targetPort: 443}]\n", "es.yaml")
    assert es.spec.ports == (ExternalPort(50051, "GRPC"), ExternalPort(8080, "HTTP2", 443))
    assert not any(p.tunnel for p in es.spec.ports)
    assert issues_of(HEAD % "a" + "spec: {hosts: [a.example], ports: [{number: 80, protocol:"
                                  " grpc}]}\n") == [
        "es.yaml doc 1: spec.ports[0].protocol: unknown value 'grpc', expected one of HTTP, "
        "HTTP2, GRPC, HTTPS, TLS, TCP"]


@pytest.mark.parametrize(("tls", "expected"), [
    ("{mode: ISTIO_MUTUAL}", "spec.tls.mode: unknown value 'ISTIO_MUTUAL', expected one of "
                             "DISABLE, SIMPLE, MUTUAL"),
    ("{mode: MUTUAL, privateKey: /k.pem}",
     "spec.tls.clientCertificate: MUTUAL needs clientCertificate and privateKey"),
    ("{clientCertificate: /c.pem}", "spec.tls.clientCertificate: only with mode MUTUAL"),
    ("{caCertificates: roots.pem}", "spec.tls.caCertificates: invalid value 'roots.pem', "
                                    "expected an absolute path to a PEM file on the sidecar's "
                                    "host"),
    ("{sni: 'not a name'}", "spec.tls.sni: invalid value 'not a name', expected a DNS name"),
])
def test_tls_settings_are_checked(tls: str, expected: str) -> None:
    assert issues_of("apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\nmetadata: "
                     f"{{name: gh}}\nspec: {{host: api.github.com, tls: {tls}}}\n") == [
        f"es.yaml doc 1: {expected}"]


def test_a_host_is_declared_once_per_namespace() -> None:
    ports = "  ports: [{number: 80, protocol: HTTP}]\n"
    text = (HEAD % "a" + "spec:\n  hosts: [a.example, b.example]\n" + ports + "---\n"
            + HEAD % "b" + "spec:\n  hosts: [c.example, b.example]\n" + ports + "---\n"
            + (HEAD % "c").replace("{name: c}", "{name: c, namespace: other}")
            + "spec:\n  hosts: [b.example]\n" + ports)
    assert issues_of(text) == [
        "es.yaml doc 2: spec.hosts[1]: host b.example already has an ExternalService "
        "(see ExternalService default/a in es.yaml doc 1)"]


def test_routes_and_policies_take_dns_names_and_need_no_declaration() -> None:
    """A Route for a host that no ExternalService declares is fine, as for a mesh service with
    no endpoints yet."""
    text = ("apiVersion: ami.mesh/v1alpha1\nkind: Route\nmetadata: {name: gh}\n"
            "spec: {host: api.github.com, rules: [{backends: [{}], timeout: 2s}]}\n---\n"
            "apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: gh}\n"
            "spec: {host: api.github.com, connectionPool: {maxConnections: 4}}\n")
    assert issues_of(text) == []

"""MeshConfig extensionProviders and AuthorizationPolicy CUSTOM as documents: fields,
defaults, the errors naming each bad field, and the checks across documents (a known
provider, one provider per workload)."""

from __future__ import annotations

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.extauthz import DEFAULT_TIMEOUT, ExtAuthzGrpc, ExtAuthzHttp
from meshctl.api.kinds import MeshConfigSpec
from meshctl.api.resources import load_documents, validate_set
from tests.resources import document, documents, mesh_config


def mesh(*providers: dict[str, object]) -> str:
    return mesh_config(extensionProviders=list(providers))


def http(name: str = "authz", **fields: object) -> dict[str, object]:
    return {"name": name, "envoyExtAuthzHttp": {"service": "authz", "port": 8000, **fields}}


def custom(name: str, provider: str, service: str | None = None, **spec: object) -> str:
    selector = {"selector": {"service": service}} if service else {}
    return document("AuthorizationPolicy", name, {
        **selector, "action": "CUSTOM", "provider": {"name": provider}, "rules": [{}], **spec})


def issues(text: str) -> list[str]:
    try:
        resources = load_documents(text, "r.yaml")
    except ValidationError as err:
        return [str(i) for i in err.issues]
    return [str(i) for i in validate_set(resources)]


def test_provider_fields_and_defaults() -> None:
    [doc] = load_documents(mesh(http(
        timeout="250ms", pathPrefix="/check/", includeHeadersInCheck=["X-User", "x-fwd-*"],
        includeAdditionalHeadersInCheck={"X-Asked-By": "mesh"},
        headersToUpstreamOnAllow=["*-user"])), "r.yaml")
    assert isinstance(doc.spec, MeshConfigSpec)
    [provider] = doc.spec.extension_providers
    spec = provider.spec
    assert isinstance(spec, ExtAuthzHttp)
    assert (provider.name, spec.service, spec.port) == ("authz", "authz", 8000)
    assert spec.timeout == 0.25 and spec.path_prefix == "/check"
    assert (spec.fail_open, spec.status_on_error) == (False, 403)
    assert "x-user" in spec.include_request_headers  # the deprecated spelling, lower-cased
    assert "x-fwd-for" in spec.include_request_headers and "x-other" not in \
        spec.include_request_headers
    assert "x-end-user" in spec.headers_to_upstream_on_allow
    assert spec.include_additional_headers == (("x-asked-by", "mesh"),)
    [default] = load_documents(mesh(http()), "r.yaml")[0].spec.extension_providers  # type: ignore[union-attr]
    assert default.spec.timeout == DEFAULT_TIMEOUT == 600.0  # Istio's 10m


def test_status_on_error_as_istio_writes_it() -> None:
    """Istio's statusOnError is a string ("503", quoted as its configs have it): taken as
    the status, as a number is; any other string is refused."""
    [doc] = load_documents(mesh(http(statusOnError="503")), "r.yaml")
    assert isinstance(doc.spec, MeshConfigSpec)
    assert doc.spec.extension_providers[0].spec.status_on_error == 503
    assert any("statusOnError" in i for i in issues(mesh(http(statusOnError="forbidden"))))


@pytest.mark.parametrize(("fields", "expected"), [
    ({"includeRequestBodyInCheck": {"maxRequestBytes": 100}},
     "spec.extensionProviders[0].envoyExtAuthzHttp.includeRequestBodyInCheck: not supported"),
    ({"statusOnError": 99},
     "spec.extensionProviders[0].envoyExtAuthzHttp.statusOnError: must be"),
    ({"port": 0}, "spec.extensionProviders[0].envoyExtAuthzHttp.port: must be"),
    ({"pathPrefix": "check"},
     "spec.extensionProviders[0].envoyExtAuthzHttp.pathPrefix: invalid value 'check'"),
    ({"headersToUpstreamOnAllow": ["x-*-y"]},
     "spec.extensionProviders[0].envoyExtAuthzHttp.headersToUpstreamOnAllow[0]: invalid"),
    ({"failOpen": "yes"}, "spec.extensionProviders[0].envoyExtAuthzHttp.failOpen: expected"),
    ({"includeHeadersInCheck": ["a"], "includeRequestHeadersInCheck": ["b"]},
     "spec.extensionProviders[0].envoyExtAuthzHttp.includeHeadersInCheck: set "
     "includeRequestHeadersInCheck only"),
    ({"timout": "1s"}, "spec.extensionProviders[0].envoyExtAuthzHttp.timout: unknown field, "
                       "did you mean 'timeout'?"),
])
def test_bad_provider_fields_are_named(fields: dict[str, object], expected: str) -> None:
    found = issues(mesh(http(**fields)))
    assert any(expected in line for line in found), found
    assert all(line.startswith("r.yaml doc 1: ") for line in found), found


def grpc(name: str = "opa", **fields: object) -> dict[str, object]:
    return {"name": name, "envoyExtAuthzGrpc": {"service": "opa", "port": 9191, **fields}}


def test_grpc_provider_fields_and_defaults() -> None:
    """envoyExtAuthzGrpc: Istio's fields and defaults (10m, fail closed with 403)."""
    [doc] = load_documents(mesh(grpc(), grpc("opa-fast", timeout="300ms", failOpen=True,
                                             statusOnError="503")), "r.yaml")
    assert isinstance(doc.spec, MeshConfigSpec)
    default, fast = doc.spec.extension_providers
    assert default.name == "opa"
    assert default.spec == ExtAuthzGrpc("opa", 9191, 600.0, False, 403)
    assert fast.spec == ExtAuthzGrpc("opa", 9191, 0.3, True, 503)
    [doc] = load_documents(mesh(grpc(clearRouteCache=True)), "r.yaml")
    assert isinstance(doc.spec, MeshConfigSpec)
    assert doc.spec.extension_providers[0].spec.clear_route_cache
    assert issues(documents(mesh(grpc()), custom("p", "opa", "api"))) == []


@pytest.mark.parametrize(("fields", "expected"), [
    ({"includeRequestBodyInCheck": {"maxRequestBytes": 100, "packAsBytes": True}},
     "spec.extensionProviders[0].envoyExtAuthzGrpc.includeRequestBodyInCheck: not supported"),
    ({"statusOnError": 99}, "spec.extensionProviders[0].envoyExtAuthzGrpc.statusOnError: "
                            "must be"),
    ({"port": 70000}, "spec.extensionProviders[0].envoyExtAuthzGrpc.port: must be"),
    ({"timeout": "soon"}, "spec.extensionProviders[0].envoyExtAuthzGrpc.timeout:"),
    ({"service": "Not A Host"}, "spec.extensionProviders[0].envoyExtAuthzGrpc.service:"),
    # an HTTP provider's field: named, and why a gRPC provider has none such
    ({"pathPrefix": "/check"}, "spec.extensionProviders[0].envoyExtAuthzGrpc.pathPrefix: "
                               "an envoyExtAuthzHttp field (Istio has none such for gRPC "
                               "providers): a gRPC check carries every request header"),
    ({"headersToUpstreamOnAllow": ["x-user"]},
     "spec.extensionProviders[0].envoyExtAuthzGrpc.headersToUpstreamOnAllow: an "
     "envoyExtAuthzHttp field"),
    ({"includeAdditionalHeadersInCheck": {"x-a": "1"}},
     "spec.extensionProviders[0].envoyExtAuthzGrpc.includeAdditionalHeadersInCheck: an "
     "envoyExtAuthzHttp field"),
    ({"clearRouteCache": "yes"},
     "spec.extensionProviders[0].envoyExtAuthzGrpc.clearRouteCache: expected true or false"),
    ({"colearRouteCache": True},
     "spec.extensionProviders[0].envoyExtAuthzGrpc.colearRouteCache: unknown field, did you "
     "mean 'clearRouteCache'?"),
])
def test_bad_grpc_provider_fields_are_named(fields: dict[str, object], expected: str) -> None:
    found = issues(mesh(grpc(**fields)))
    assert any(expected in line for line in found), found
    assert all(line.startswith("r.yaml doc 1: ") for line in found), found


def test_provider_kind_and_name_are_checked() -> None:
    found = issues(mesh({"name": "g", "envoyExtAuthzGrpc": {"port": 1}}))
    assert any("spec.extensionProviders[0].envoyExtAuthzGrpc.service: field is required" in f
               for f in found), found
    both = {"name": "g", "envoyExtAuthzHttp": {"service": "a", "port": 1},
            "envoyExtAuthzGrpc": {"service": "a", "port": 1}}
    assert any("spec.extensionProviders[0].envoyExtAuthzGrpc: set one of envoyExtAuthzHttp "
               "and envoyExtAuthzGrpc" in f for f in issues(mesh(both))), issues(mesh(both))
    found = issues(mesh(http("authz"), http("other"), http("authz")))
    assert any("spec.extensionProviders[2].name: duplicate provider name 'authz'" in f
               for f in found), found
    assert any("spec.extensionProviders[0]: set envoyExtAuthzHttp or envoyExtAuthzGrpc" in f
               for f in issues(mesh({"name": "x"}))), found


def test_custom_needs_a_provider_and_only_custom_takes_one() -> None:
    assert issues(document("AuthorizationPolicy", "p", {"action": "CUSTOM", "rules": [{}]})) == [
        "r.yaml doc 1: spec.provider: action CUSTOM needs provider: {name: ...} (a MeshConfig "
        "extensionProviders name)"]
    assert issues(document("AuthorizationPolicy", "p", {
        "action": "DENY", "provider": {"name": "authz"}})) == [
        "r.yaml doc 1: spec.provider: only action CUSTOM takes a provider, not DENY"]


def test_unknown_provider_is_refused() -> None:
    assert issues(documents(mesh(http("authz")), custom("p", "authx"))) == [
        "r.yaml doc 2: spec.provider.name: unknown provider 'authx' (MeshConfig "
        "spec.extensionProviders; declared: authz)"]
    assert issues(custom("p", "authz")) == [
        "r.yaml doc 1: spec.provider.name: unknown provider 'authz' (MeshConfig "
        "spec.extensionProviders; the MeshConfig declares none)"]


def test_one_provider_per_workload() -> None:
    base = mesh(http("a"), http("b"))
    # the same provider twice, or different providers for different services: fine
    assert issues(documents(base, custom("p1", "a", "api"), custom("p2", "a", "api"),
                            custom("p3", "b", "web"))) == []
    assert issues(documents(base, custom("p1", "a", "api"), custom("p2", "b", "api"))) == [
        "r.yaml doc 3: spec.provider.name: service api already has a CUSTOM policy with "
        "provider 'a' (default/p1): a workload may use one provider"]
    # a namespace-wide one is every workload's
    assert issues(documents(base, custom("p1", "a"), custom("p2", "b", "web"))) == [
        "r.yaml doc 3: spec.provider.name: service web already has a CUSTOM policy with "
        "provider 'a' (default/p1): a workload may use one provider"]
    # another namespace's is not
    other = document("AuthorizationPolicy", "p2", {
        "action": "CUSTOM", "provider": {"name": "b"}, "rules": [{}]}, namespace="other")
    assert issues(documents(base, custom("p1", "a"), other)) == []


def test_custom_rules_may_read_the_jwt() -> None:
    """The JWT is verified before the check (as Envoy's jwt_authn before ext_authz), so a
    CUSTOM rule may select requests by their principal or claims."""
    spec = {"action": "CUSTOM", "provider": {"name": "authz"}, "rules": [
        {"to": [{"paths": ["/a"]}]}, {"from": [{"requestPrincipals": ["*"]}]},
        {"when": [{"claim": "groups", "values": ["x"]}]}]}
    assert issues(documents(mesh(http()), document("AuthorizationPolicy", "p", spec))) == []


def test_a_custom_policy_cannot_be_dry_run() -> None:
    """A provider's answer is enforced whatever the annotation says, so a dry-run CUSTOM
    policy would not be what it claims: refused (ALLOW and DENY may be dry-run)."""
    text = mesh(http("oauth")) + "---\n" + custom("check", "oauth").replace(
        "metadata:\n", "metadata:\n  annotations: {istio.io/dry-run: 'true'}\n", 1)
    assert any("metadata.annotations.istio.io/dry-run: a CUSTOM policy cannot be dry-run"
               in i for i in issues(text)), issues(text)
    allowed = custom("check", "oauth").replace(
        "metadata:\n", "metadata:\n  annotations: {istio.io/dry-run: 'false'}\n", 1)
    assert issues(mesh(http("oauth")) + "---\n" + allowed) == []

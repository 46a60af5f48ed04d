"""MeshConfig extensionProviders: the external authorization services (Istio's
envoyExtAuthzHttp and envoyExtAuthzGrpc) that AuthorizationPolicy `action: CUSTOM` delegates
to."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from meshctl.api import fields as F
from meshctl.api.errors import Issue, fail
from meshctl.api.fields import Fields

DEFAULT_TIMEOUT = 600.0  # Istio's default for either provider's timeout (10m)
# A header name pattern as Istio's: exact, 'prefix*' or '*suffix' (case-insensitive).
HEADER_PATTERN = r"^(\*?[-!#$%&'+.^_`|~0-9A-Za-z]+|[-!#$%&'+.^_`|~0-9A-Za-z]+\*)$"
_PATTERN = F.string(HEADER_PATTERN, "a header name, or one with '*' at its start or end "
                                    "(x-auth-*)")
EXTENSION_NAME = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
_NAME = F.string(EXTENSION_NAME, "a name of letters, digits, '-', '_' and '.'")
# what the service may be: a mesh service (`authz`, `authz.ns`, its FQDN) or an outside host
SERVICE = F.string(F.DNS_SUBDOMAIN, "a mesh service (authz, authz.ns) or an ExternalService "
                                    "host", 253)


@dataclass(frozen=True, slots=True)
class HeaderPatterns:
    """Header names, lower-case: exact, 'prefix*' or '*suffix' (Istio's header matchers)."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()

    def __contains__(self, name: object) -> bool:
        assert isinstance(name, str)
        return (name in self.exact or (bool(self.prefixes) and name.startswith(self.prefixes))
                or (bool(self.suffixes) and name.endswith(self.suffixes)))

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes or self.suffixes)


def _patterns(data: object, path: str) -> HeaderPatterns:
    names = [n.lower() for n in F.list_of(_PATTERN)(data, path)]
    return HeaderPatterns(frozenset(n for n in names if "*" not in n),
                          tuple(n[:-1] for n in names if n.endswith("*")),
                          tuple(n[1:] for n in names if n.startswith("*")))


@dataclass(frozen=True, slots=True)
class ExtAuthzHttp:
    """An envoyExtAuthzHttp provider: where the check goes and which headers travel."""

    service: str
    port: int
    timeout: float = DEFAULT_TIMEOUT
    path_prefix: str = ""
    fail_open: bool = False
    status_on_error: int = 403
    include_request_headers: HeaderPatterns = HeaderPatterns()
    include_additional_headers: tuple[tuple[str, str], ...] = ()
    headers_to_upstream_on_allow: HeaderPatterns = HeaderPatterns()
    headers_to_downstream_on_allow: HeaderPatterns = HeaderPatterns()
    headers_to_downstream_on_deny: HeaderPatterns = HeaderPatterns()
    clear_route_cache: bool = False  # route again once the provider edited the headers


@dataclass(frozen=True, slots=True)
class ExtAuthzGrpc:
    """An envoyExtAuthzGrpc provider: Envoy's `Authorization/Check` over HTTP/2 (gRPC)."""

    service: str
    port: int
    timeout: float = DEFAULT_TIMEOUT
    fail_open: bool = False
    status_on_error: int = 403
    clear_route_cache: bool = False


@dataclass(frozen=True, slots=True)
class ExtensionProvider:
    """One MeshConfig extensionProviders item: its name and its one kind's settings."""

    name: str
    spec: ExtAuthzHttp | ExtAuthzGrpc


PATH_PREFIX = r"^/[^\s?#]*$"
_HTTP_PATH = F.string(PATH_PREFIX, "a path starting with '/', like /check")


def _parse_http(data: object, path: str) -> ExtAuthzHttp:
    f = Fields(data, path)
    service = f.required("service", SERVICE, "")
    port = f.required("port", F.integer(1, 65535), 0)
    timeout = f.value("timeout", F.duration(), DEFAULT_TIMEOUT)
    prefix = f.value("pathPrefix", _HTTP_PATH, "")
    fail_open = f.value("failOpen", F.boolean, False)
    status = f.value("statusOnError", _status, 403)
    if f.has("includeRequestHeadersInCheck") and f.has("includeHeadersInCheck"):
        f.add(f.at("includeHeadersInCheck"), "set includeRequestHeadersInCheck only "
                                             "(includeHeadersInCheck is its deprecated name)")
    headers = f.value("includeRequestHeadersInCheck", _patterns, None) \
        or f.value("includeHeadersInCheck", _patterns, HeaderPatterns())
    extra = f.value("includeAdditionalHeadersInCheck",
                    F.string_map(F.string(F.HEADER_NAME, "an HTTP header name"),
                                 F.string(F.HEADER_FIELD_VALUE, "a header value")), {})
    _no_body(f)
    spec = ExtAuthzHttp(
        service, port, timeout, prefix.rstrip("/") if prefix != "/" else "", fail_open, status,
        headers, tuple((k.lower(), v) for k, v in extra.items()),
        f.value("headersToUpstreamOnAllow", _patterns, HeaderPatterns()),
        f.value("headersToDownstreamOnAllow", _patterns, HeaderPatterns()),
        f.value("headersToDownstreamOnDeny", _patterns, HeaderPatterns()),
        f.value("clearRouteCache", F.boolean, False))
    f.finish()
    return spec


def _no_body(f: Fields) -> None:
    if f.has("includeRequestBodyInCheck"):
        f.add(f.at("includeRequestBodyInCheck"),
              "not supported: Ami sends the authorization service no body (the request's "
              "body waits, unread, for the decision)")


def _parse_grpc(data: object, path: str) -> ExtAuthzGrpc:
    f = Fields(data, path)
    service = f.required("service", SERVICE, "")
    port = f.required("port", F.integer(1, 65535), 0)
    spec = ExtAuthzGrpc(service, port, f.value("timeout", F.duration(), DEFAULT_TIMEOUT),
                        f.value("failOpen", F.boolean, False),
                        f.value("statusOnError", _status, 403),
                        f.value("clearRouteCache", F.boolean, False))
    _no_body(f)
    for key in HTTP_ONLY:
        if f.has(key):
            f.add(f.at(key), "an envoyExtAuthzHttp field (Istio has none such for gRPC "
                             "providers): a gRPC check carries every request header, and its "
                             "answer says itself which headers to set on the request and the "
                             "response (ok_response, denied_response)")
    f.finish()
    return spec


# envoyExtAuthzHttp's own fields: what an HTTP check sends and which answer headers travel
HTTP_ONLY = ("pathPrefix", "includeRequestHeadersInCheck", "includeHeadersInCheck",
             "includeAdditionalHeadersInCheck", "headersToUpstreamOnAllow",
             "headersToDownstreamOnAllow", "headersToDownstreamOnDeny")


STATUS_TEXT = r"^[2-5][0-9][0-9]$"


def _status(data: object, path: str) -> int:
    """200-599; or as Istio writes it (its statusOnError is a string: "503")."""
    if isinstance(data, str) and re.fullmatch(STATUS_TEXT, data):
        data = int(data)
    return F.integer(200, 599)(data, path)


def parse_provider(data: object, path: str) -> ExtensionProvider:
    """Parse one extensionProviders item (also a proxy snapshot's inbound.extAuthz items)."""
    f = Fields(data, path)
    name = f.required("name", _NAME, "")
    kinds = [k for k in ("envoyExtAuthzHttp", "envoyExtAuthzGrpc") if f.has(k)]
    if not kinds:
        f.add(f.path, "set envoyExtAuthzHttp or envoyExtAuthzGrpc (the provider's kind)")
    elif len(kinds) > 1:
        f.add(f.at("envoyExtAuthzGrpc"), "set one of envoyExtAuthzHttp and envoyExtAuthzGrpc "
                                         "(a provider has one kind)")
    http = f.optional("envoyExtAuthzHttp", _parse_http)
    grpc = f.optional("envoyExtAuthzGrpc", _parse_grpc)
    f.finish()
    spec = http or grpc
    assert spec is not None
    return ExtensionProvider(name, spec)


def parse_providers(data: object, path: str) -> tuple[ExtensionProvider, ...]:
    """MeshConfig.spec.extensionProviders: names are unique."""
    providers = F.list_of(parse_provider)(data, path)
    seen: set[str] = set()
    for i, provider in enumerate(providers):
        if provider.name in seen:
            fail(f"{path}[{i}].name", f"duplicate provider name {provider.name!r}")
        seen.add(provider.name)
    return providers


def custom_policy_issues(items: Iterable[Any]) -> list[Issue]:
    """Checks of AuthorizationPolicy CUSTOM across documents (meshctl.api.resources
    .validate_set): its provider is one the MeshConfig declares, and a workload has one
    provider (as Istio: two CUSTOM policies naming different providers for one workload are
    refused; a namespace-wide one, without selector, counts for each of its workloads)."""
    from meshctl.api.authz import AuthorizationPolicySpec
    from meshctl.api.kinds import MeshConfigSpec

    items = list(items)
    known = {p.name for r in items if isinstance(r.spec, MeshConfigSpec)
             for p in r.spec.extension_providers}
    issues: list[Issue] = []
    first: dict[tuple[str, str | None], Any] = {}  # (namespace, service or None) -> policy
    for r in items:
        spec = r.spec
        if not isinstance(spec, AuthorizationPolicySpec) or spec.action != "CUSTOM":
            continue
        if spec.provider not in known:
            declared = f"declared: {', '.join(sorted(known))}" if known \
                else "the MeshConfig declares none"
            issues.append(Issue(r.source, r.doc, "spec.provider.name",
                                f"unknown provider {spec.provider!r} (MeshConfig "
                                f"spec.extensionProviders; {declared})"))
            continue
        for (namespace, service), other in first.items():
            if (namespace == r.namespace and other.spec.provider != spec.provider
                    and (service is None or spec.service is None or service == spec.service)):
                whom = f"service {spec.service or service}" if spec.service or service \
                    else f"namespace {namespace}"
                issues.append(Issue(r.source, r.doc, "spec.provider.name",
                                    f"{whom} already has a CUSTOM policy with provider "
                                    f"{other.spec.provider!r} ({namespace}/{other.name}): a "
                                    "workload may use one provider"))
                break
        else:
            first.setdefault((r.namespace, spec.service), r)
    return issues

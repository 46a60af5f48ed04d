"""Route rules, the format shared by Route resources and proxy snapshots, as frozen dataclasses.

``parse_rules(data, path)`` is the one parser: the control plane validates resources with it and
the proxy parses pushed snapshots with it. Pure (no I/O, stdlib only).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.errors import Issue, ValidationError, fail
from meshctl.api.fields import Fields
from meshctl.api.matches import (
    PATH_MATCHERS,
    SCHEMES,
    Match,
    StringMatch,
    parse_match_blocks,
    string_matcher,
)
from meshctl.api.policy import RateLimit, parse_rate_limit

# gRPC conditions (a trailers-only answer with this grpc-status), as Envoy's and Istio's.
GRPC_RETRY_ON = {"cancelled": 1, "deadline-exceeded": 4, "resource-exhausted": 8,
                 "internal": 13, "unavailable": 14}
RETRY_ON = ("5xx", "gateway-error", "reset", "connect-failure", "retriable-status-codes",
            *GRPC_RETRY_ON)
# gRPC status codes by name (grpc/doc/statuscodes.md), for fault.abort.grpcStatus; OK (0) is
# no abort.
GRPC_CODES = {"CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
              "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7,
              "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10,
              "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
              "DATA_LOSS": 15, "UNAUTHENTICATED": 16}
# Declared retries without retryOn retry only failures where the upstream did not answer.
DEFAULT_RETRY_ON = ("connect-failure", "gateway-error", "reset")

_SERVICE = F.string(F.DNS_LABEL, "a service name (DNS-1123 label)")
_SUBSET = F.string(F.DNS_LABEL, "a subset name (DNS-1123 label)")
_METHOD = F.string(F.METHOD, "an upper-case HTTP method like GET")
_PERCENT = F.number(0, 100)
_STATUS = F.integer(200, 599)
_HEADER_NAME = F.string(F.HEADER_NAME, "an HTTP header name")
_HEADER_VALUE = F.string(F.HEADER_FIELD_VALUE, "a header value: visible ASCII, spaces and tabs "
                         "(or latin-1 letters), no control characters")
# Framing and hop-by-hop headers: the proxy writes them for each hop. A route editing them
# would desynchronise the message (`set: {content-length: "0"}` turned a request body into a
# second request on the upstream connection, past every policy of the caller).
_NOT_EDITABLE = frozenset({"content-length", "transfer-encoding", "connection", "keep-alive",
                           "proxy-connection", "te", "trailer", "upgrade"})


def editable_header_name(data: object, path: str) -> str:
    name = _HEADER_NAME(data, path)
    if name.lower() in _NOT_EDITABLE:
        fail(path, f"'{name.lower()}' frames the message or is hop-by-hop; the proxy sets it "
                   "and it cannot be edited")
    return name


@dataclass(frozen=True, slots=True)
class Backend:
    """A weighted destination; None service = the route's host, None subset = all endpoints."""

    service: str | None
    subset: str | None
    weight: int


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff between retry attempts (seconds)."""

    base_interval: float = 0.025
    max_interval: float = 0.25  # default: 10 x base_interval


@dataclass(frozen=True, slots=True)
class Retries:
    """How many times and on which failures a request is retried."""

    attempts: int
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = DEFAULT_RETRY_ON
    retriable_status_codes: tuple[int, ...] = ()
    backoff: Backoff = Backoff()
    allow_non_idempotent: bool = False


@dataclass(frozen=True, slots=True)
class Delay:
    """Injected latency for ``percent`` of requests."""

    fixed_delay: float
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class Abort:
    """Injected error response for ``percent`` of requests: ``http_status``, or with
    ``grpc_status`` a gRPC call's trailers-only answer (``http_status`` is then the HTTP
    status other requests get, the gRPC code's)."""

    http_status: int
    percent: float = 100.0
    grpc_status: int | None = None


@dataclass(frozen=True, slots=True)
class Fault:
    """Fault injection: a delay, an abort, or both."""

    delay: Delay | None = None
    abort: Abort | None = None


@dataclass(frozen=True, slots=True)
class Mirror:
    """Copy ``percent`` of requests, fire-and-forget, to another destination."""

    service: str | None
    subset: str | None
    percent: float = 100.0


@dataclass(frozen=True, slots=True)
class HeaderEdits:
    """Header changes in one direction; names in lower case."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class HeaderOps:
    """Header changes on the request (to the upstream) and on the response (to the caller)."""

    request: HeaderEdits = HeaderEdits()
    response: HeaderEdits = HeaderEdits()


@dataclass(frozen=True, slots=True)
class Rewrite:
    """What the request looks like upstream: ``uri`` replaces the prefix that matched (the
    whole path if no prefix did), ``authority`` the Host header."""

    uri: str | None = None
    authority: str | None = None


@dataclass(frozen=True, slots=True)
class Redirect:
    """Answer with a redirect instead of forwarding; unset parts keep the request's own."""

    uri: str | None = None
    authority: str | None = None
    scheme: str | None = None
    port: int | None = None
    code: int = 301


@dataclass(frozen=True, slots=True)
class Cors:
    """Cross-origin access for browsers, answered by the sidecar (as Istio's CorsPolicy)."""

    allow_origins: tuple[StringMatch, ...]
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: float | None = None
    allow_credentials: bool = False


# Envoy's default max_direct_response_body_size_bytes (the route configuration's limit)
DIRECT_BODY_MAX = 4096


@dataclass(frozen=True, slots=True)
class DirectResponse:
    """Answer with this status and body instead of forwarding (Istio's HTTPDirectResponse)."""

    status: int
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class Rule:
    """One route rule: if any match block holds, send to the backends with these policies
    (or, with ``redirect`` or ``direct_response``, answer the request itself)."""

    name: str | None
    matches: tuple[Match, ...]
    backends: tuple[Backend, ...]
    timeout: float | None = None
    retries: Retries | None = None
    fault: Fault | None = None
    mirror: Mirror | None = None
    headers: HeaderOps = HeaderOps()
    rewrite: Rewrite | None = None
    redirect: Redirect | None = None
    cors: Cors | None = None
    # Enforced by the proxy that applies the rule (the gateway, the caller's sidecar), as
    # Envoy's local_ratelimit at Istio's GATEWAY / SIDECAR_OUTBOUND; the fields and their
    # meaning are DestinationPolicy.rateLimit's.
    rate_limit: RateLimit | None = None
    direct_response: DirectResponse | None = None

    @property
    def http_actions(self) -> tuple[str, ...]:
        """The fields of this rule that act on HTTP requests only; a rule with any of them
        does not apply to a TCP connection."""
        return tuple(name for name, value in (
            ("timeout", self.timeout), ("retries", self.retries), ("fault", self.fault),
            ("mirror", self.mirror), ("headers", self.headers != HeaderOps()),
            ("rewrite", self.rewrite), ("redirect", self.redirect), ("cors", self.cors),
            ("rateLimit", self.rate_limit), ("directResponse", self.direct_response))
            if value)

    def matches_request(self, method: str, path: str, headers: Mapping[str, str],
                        query: Mapping[str, str]) -> bool:
        """Whether any match block holds (no blocks = every request)."""
        return not self.matches or any(m.matches(method, path, headers, query)
                                       for m in self.matches)


def http_only_fields(rules: tuple[Rule, ...], path: str = "spec.rules") -> list[str]:
    """Field paths of ``rules`` that a TCP service's connections never see: HTTP-only match
    conditions and actions (see docs/traffic.md, TCP services)."""
    found = []
    for i, rule in enumerate(rules):
        found += [f"{path}[{i}].matches[{j}].{name}" for j, block in enumerate(rule.matches)
                  for name in block.http_conditions]
        found += [f"{path}[{i}].{name}" for name in rule.http_actions]
    return found


def parse_rules(data: object, path: str) -> tuple[Rule, ...]:
    """Parse a list of rules; raises ValidationError listing every problem with its field path."""
    rules = F.list_of(parse_rule, 1, "at least one rule is required")(data, path)
    issues: list[Issue] = []
    try:
        check_rule_names([(i, r.name) for i, r in enumerate(rules) if r.name], path)
    except ValidationError as err:
        issues.extend(err.issues)
    for index, rule in enumerate(rules[:-1]):
        if not rule.matches or any(m == Match() for m in rule.matches):
            issues.append(Issue(None, None, f"{path}[{index + 1}]",
                                f"unreachable: rules[{index}] matches every request"))
            break
    if issues:
        raise ValidationError(issues)
    return rules


def check_rule_names(named: list[tuple[int, str]], path: str) -> None:
    """Refuse a rule name used twice in one list of rules: ``named`` is (index, name)."""
    issues: list[Issue] = []
    names: dict[str, int] = {}
    for index, name in named:
        if name in names:
            issues.append(Issue(None, None, f"{path}[{index}].name",
                                f"duplicate rule name '{name}', "
                                f"already used by rules[{names[name]}]"))
        names.setdefault(name, index)
    if issues:
        raise ValidationError(issues)


# What a rule that redirects cannot have: it forwards nothing.
_FORWARDING_ONLY = ("backends", "timeout", "retries", "fault", "mirror", "headers", "rewrite",
                    "cors", "rateLimit", "directResponse")
# What a rule with a directResponse cannot have: it forwards nothing either, but its answer
# may carry response header edits, and CORS and a rate limit come before it, as Istio's.
_NOT_WITH_DIRECT = ("backends", "timeout", "retries", "fault", "mirror", "rewrite", "redirect")


def parse_rule(data: object, path: str) -> Rule:
    """Parse one Route rule (also a Gateway rule's, which has no `destination`)."""
    f = Fields(data, path)
    name = f.optional("name", F.string(F.DNS_SUBDOMAIN, "a DNS-1123 name"))
    matches = f.value("matches", parse_match_blocks, ())
    redirect = f.optional("redirect", _parse_redirect)
    direct = f.optional("directResponse", _parse_direct_response)
    if f.has("redirect"):
        for key in _FORWARDING_ONLY:
            if f.has(key):
                f.add(f.at(key), "a rule with a redirect answers the request itself: "
                                 f"remove {key} or the redirect")
    elif f.has("directResponse"):
        for key in _NOT_WITH_DIRECT:
            if f.has(key):
                f.add(f.at(key), "a rule with a directResponse answers the request itself: "
                                 f"remove {key} or the directResponse")
    answers = f.has("redirect") or f.has("directResponse")
    backends = f.value("backends", _parse_backends, ()) if answers else \
        f.required("backends", _parse_backends, ())
    timeout = f.optional("timeout", F.duration())
    retries = f.optional("retries", _parse_retries)
    fault = f.optional("fault", _parse_fault)
    mirror = f.optional("mirror", _parse_mirror)
    headers = f.value("headers", _parse_header_ops, HeaderOps())
    if f.has("directResponse") and not f.has("redirect") and headers.request != HeaderEdits():
        f.add(f.at("headers") + ".request", "a rule with a directResponse sends no request "
                                            "upstream: only headers.response applies")
    rewrite = f.optional("rewrite", _parse_rewrite)
    cors = f.optional("cors", _parse_cors)
    rate_limit = f.optional("rateLimit", parse_rate_limit)
    f.finish()
    return Rule(name, matches, backends, timeout, retries, fault, mirror, headers, rewrite,
                redirect, cors, rate_limit, direct)


def _parse_direct_response(data: object, path: str) -> DirectResponse:
    f = Fields(data, path)
    status = f.required("status", _STATUS, 0)
    body = f.value("body", _parse_direct_body, b"")
    if body and status in (204, 205, 304):
        f.add(f.at("body"), f"a {status} answer has no body (RFC 9110): remove the body")
    f.finish()
    return DirectResponse(status, body)


def _parse_direct_body(data: object, path: str) -> bytes:
    """`{string: TEXT}` (sent as UTF-8) or `{bytes: BASE64}`, at most DIRECT_BODY_MAX bytes."""
    if not isinstance(data, Mapping) or len(data) != 1 or next(iter(data)) not in (
            "string", "bytes"):
        fail(path, "expected a mapping with exactly one of string, bytes, like {string: TEXT}")
    ((kind, value),) = data.items()
    where = f"{path}.{kind}"
    text = "" if value == "" else F.string()(value, where)
    if kind == "string":
        body = text.encode("utf-8")
    else:
        try:
            body = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            fail(where, "expected base64 (RFC 4648, standard alphabet, padded)")
    if len(body) > DIRECT_BODY_MAX:
        fail(where, f"body is {len(body)} bytes, at most {DIRECT_BODY_MAX} are allowed "
                    "(the proxy keeps it in memory, as Envoy's default limit)")
    return body


def _parse_cors(data: object, path: str) -> Cors:
    f = Fields(data, path)
    origins = f.required("allowOrigins", F.list_of(_origin_matcher, 1), ())
    methods = f.value("allowMethods", F.list_of(_METHOD), ())
    allow_headers = f.value("allowHeaders", F.list_of(_HEADER_NAME), ())
    expose = f.value("exposeHeaders", F.list_of(_HEADER_NAME), ())
    max_age = f.optional("maxAge", F.duration())
    credentials = f.value("allowCredentials", F.boolean, False)
    f.finish()
    return Cors(origins, methods, tuple(h.lower() for h in allow_headers),
                tuple(h.lower() for h in expose), max_age, credentials)


def _origin_matcher(data: object, path: str) -> StringMatch:
    """`{exact: https://a.example}`, `{prefix: ...}`, `{regex: ...}`, or `{exact: "*"}`."""
    return string_matcher(data, path, PATH_MATCHERS)


# A path as the request line carries it: starts with '/', then visible ASCII other than the
# query's '?' and the fragment's '#' (anything else percent-encoded: it is sent in a request
# line or a Location header, where other bytes are not allowed).
URI_PATH = r'^/[!-"$->@-~]*$'
_URI = F.string(URI_PATH, "a path starting with '/', in visible ASCII without '?' or '#' "
                          "(percent-encode other characters)")
AUTHORITY = r"^[A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?(:" + F.PORT + r")?$"
_AUTHORITY = F.string(AUTHORITY, "a host name, with an optional :port")
REDIRECT_CODES = (301, 302, 303, 307, 308)


def _parse_rewrite(data: object, path: str) -> Rewrite:
    f = Fields(data, path)
    uri = f.optional("uri", _URI)
    authority = f.optional("authority", _AUTHORITY)
    if not f.has("uri") and not f.has("authority"):
        f.add(path, "set uri, authority or both")
    f.finish()
    return Rewrite(uri, authority)


def _parse_redirect(data: object, path: str) -> Redirect:
    f = Fields(data, path)
    uri = f.optional("uri", _URI)
    authority = f.optional("authority", _AUTHORITY)
    scheme = f.optional("scheme", F.enum(SCHEMES))
    port = f.optional("port", F.integer(1, 65535))
    code = f.value("redirectCode", _redirect_code, 301)
    if not any(f.has(k) for k in ("uri", "authority", "scheme", "port")):
        f.add(path, "set at least one of uri, authority, scheme, port")
    f.finish()
    return Redirect(uri, authority, scheme, port, code)


def _redirect_code(data: object, path: str) -> int:
    code = F.integer()(data, path)
    if code not in REDIRECT_CODES:
        fail(path, f"must be one of {', '.join(map(str, REDIRECT_CODES))}, got {code}")
    return code


def _parse_backend(data: object, path: str) -> tuple[str | None, str | None, int | None]:
    f = Fields(data, path)
    service = f.optional("service", _SERVICE)
    subset = f.optional("subset", _SUBSET)
    weight = f.optional("weight", F.integer(0, 100))
    f.finish()
    return service, subset, weight


def _parse_backends(data: object, path: str) -> tuple[Backend, ...]:
    items = F.list_of(_parse_backend, 1, "at least one backend is required")(data, path)
    if len(items) == 1 and items[0][2] is None:
        return (Backend(items[0][0], items[0][1], 100),)
    issues: list[Issue] = []
    seen: dict[tuple[str | None, str | None], int] = {}
    for index, (service, subset, weight) in enumerate(items):
        where = f"{path}[{index}]"
        if weight is None:
            issues.append(Issue(None, None, f"{where}.weight",
                                "field is required when a rule has more than one backend"))
        if (service, subset) in seen:
            other = seen[(service, subset)]
            if subset is not None:
                issues.append(Issue(None, None, f"{where}.subset",
                                    f"duplicate subset '{subset}', already in backends[{other}]"))
            else:
                issues.append(Issue(None, None, where, f"duplicate of backends[{other}]"))
        seen.setdefault((service, subset), index)
    total = sum(weight or 0 for _, _, weight in items)
    if not issues and total != 100:
        issues.append(Issue(None, None, path, f"weights sum to {total}, must be 100"))
    if issues:
        raise ValidationError(issues)
    return tuple(Backend(service, subset, weight or 0) for service, subset, weight in items)


def _parse_retries(data: object, path: str) -> Retries:
    f = Fields(data, path)
    attempts = f.required("attempts", F.integer(0), 0)
    per_try = f.optional("perTryTimeout", F.duration())
    retry_on = f.value("retryOn", F.list_of(F.enum(RETRY_ON), 1), DEFAULT_RETRY_ON)
    codes = f.value("retriableStatusCodes", F.list_of(_STATUS, 1), ())
    backoff = f.value("backoff", _parse_backoff, Backoff())
    allow = f.value("allowNonIdempotent", F.boolean, False)
    if codes and "retriable-status-codes" not in retry_on:
        f.add(f.at("retriableStatusCodes"),
              "has no effect unless retryOn contains retriable-status-codes")
    if not codes and "retriable-status-codes" in retry_on and f.has("retryOn"):
        f.add(f.at("retryOn"), "retriable-status-codes needs a non-empty retriableStatusCodes")
    f.finish()
    return Retries(attempts, per_try, retry_on, codes, backoff, allow)


def _parse_backoff(data: object, path: str) -> Backoff:
    f = Fields(data, path)
    base = f.value("baseInterval", F.duration(), 0.025)
    maximum = f.value("maxInterval", F.duration(), base * 10)
    if maximum < base:
        f.add(f.at("maxInterval"), "must not be shorter than baseInterval")
    f.finish()
    return Backoff(base, maximum)


def _parse_fault(data: object, path: str) -> Fault:
    f = Fields(data, path)
    delay = f.optional("delay", _parse_delay)
    abort = f.optional("abort", _parse_abort)
    if not f.has("delay") and not f.has("abort"):
        f.add(path, "set delay, abort or both")
    f.finish()
    return Fault(delay, abort)


def _parse_delay(data: object, path: str) -> Delay:
    f = Fields(data, path)
    fixed = f.required("fixedDelay", F.duration(), 0.0)
    percent = f.value("percent", _PERCENT, 100.0)
    f.finish()
    return Delay(fixed, percent)


def _parse_abort(data: object, path: str) -> Abort:
    f = Fields(data, path)
    if f.has("httpStatus") == f.has("grpcStatus"):
        f.add(path, "set exactly one of httpStatus, grpcStatus")
    status = f.optional("httpStatus", _STATUS)
    grpc = f.optional("grpcStatus", grpc_code)
    percent = f.value("percent", _PERCENT, 100.0)
    f.finish()
    if grpc is not None:
        return Abort(HTTP_OF_GRPC.get(grpc, 500), percent, grpc)
    return Abort(status or 0, percent)


# gRPC code -> the HTTP status of a non-gRPC request's answer (the inverse of gRPC's "HTTP to
# gRPC status code mapping", as Envoy's grpcToHttpStatus); other codes: 500.
HTTP_OF_GRPC = {1: 499, 3: 400, 4: 504, 5: 404, 7: 403, 8: 429, 12: 501, 14: 503, 16: 401}


def grpc_code(data: object, path: str) -> int:
    """A gRPC status other than OK: its name (`UNAVAILABLE`) or its number (1-16), also as a
    string of ASCII digits (str.isdigit alone took `²`, which int() refuses, and `١٤`)."""
    if isinstance(data, str) and not (data.isascii() and data.isdigit()):
        if data == "OK":
            fail(path, "OK is no abort: name a failure like UNAVAILABLE")
        if data not in GRPC_CODES:
            fail(path, f"unknown gRPC status {data!r}, expected a code name in upper case "
                       f"like UNAVAILABLE ({', '.join(GRPC_CODES)}) or its number, 1-16")
        return GRPC_CODES[data]
    code = int(data) if isinstance(data, str) else F.integer()(data, path)
    if not 1 <= code <= 16:
        fail(path, f"expected a gRPC status from 1 to 16 (OK, 0, is no abort), got {code}")
    return code


def _parse_mirror(data: object, path: str) -> Mirror:
    f = Fields(data, path)
    service = f.optional("service", _SERVICE)
    subset = f.optional("subset", _SUBSET)
    percent = f.value("percent", _PERCENT, 100.0)
    f.finish()
    return Mirror(service, subset, percent)


def _parse_header_ops(data: object, path: str) -> HeaderOps:
    f = Fields(data, path)
    request = f.value("request", _parse_header_edits, HeaderEdits())
    response = f.value("response", _parse_header_edits, HeaderEdits())
    f.finish()
    return HeaderOps(request, response)


def _parse_header_edits(data: object, path: str) -> HeaderEdits:
    f = Fields(data, path)
    values = F.string_map(editable_header_name, header_value)
    set_ = f.value("set", values, {})
    add = f.value("add", values, {})
    remove = f.value("remove", F.list_of(editable_header_name), ())
    f.finish()
    return HeaderEdits(tuple((k.lower(), v) for k, v in set_.items()),
                       tuple((k.lower(), v) for k, v in add.items()),
                       tuple(name.lower() for name in remove))


def header_value(data: object, path: str) -> str:
    """Header values may be empty but never contain CR, LF, NUL (header injection) or what
    latin-1 cannot encode (the sidecar could not write it: its whole config would be refused)."""
    return "" if data == "" else _HEADER_VALUE(data, path)

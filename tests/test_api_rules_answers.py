"""Validation of Istio's route-rule fields in Ami's format: directResponse (parser, JSON
Schema and the HTTP-only list a TCP service is warned of), fault.abort.grpcStatus, match
withoutHeaders and ignoreUriCase (also as the proxy compiles them)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import yaml

from meshctl.api.errors import ValidationError
from meshctl.api.jsonschema import schema_for
from meshctl.api.matches import StringMatch, parse_match
from meshctl.api.resources import parse_document
from meshctl.api.rules import (
    Abort,
    DirectResponse,
    http_only_fields,
    parse_rules,
)
from proxy.policy.matching import compile_matches


def errors(rules: str) -> list[str]:
    try:
        parse_rules(yaml.safe_load(rules), "spec.rules")
    except ValidationError as err:
        return [f"{i.path}: {i.message}" for i in err.issues]
    return []


def route(rules: str) -> dict[str, Any]:
    return {"apiVersion": "ami.mesh/v1alpha1", "kind": "Route", "metadata": {"name": "r"},
            "spec": {"host": "web", "rules": yaml.safe_load(rules)}}


def schema_accepts(document: dict[str, Any]) -> bool:
    validator = jsonschema.Draft202012Validator(schema_for("Route"))
    return not list(validator.iter_errors(document))


# --- directResponse -------------------------------------------------------------------------
ACCEPTED = [
    "[{directResponse: {status: 503, body: {string: unknown error}}}]",
    "[{directResponse: {status: 200, body: {bytes: AAEC/w==}}}]",
    "[{directResponse: {status: 404}}]",
    "[{directResponse: {status: 200, body: {string: ''}}}]",
    # its answer may carry response edits; CORS and a rate limit come before it
    "[{directResponse: {status: 503}, headers: {response: {set: {content-type: a/b}}},"
    " cors: {allowOrigins: [{exact: '*'}]}, rateLimit: {requestsPerSecond: 1}}]",
]


@pytest.mark.parametrize("rules", ACCEPTED)
def test_direct_responses_are_accepted_by_parser_and_schema(rules: str) -> None:
    """Each form Istio's HTTPDirectResponse takes parses, and the JSON Schema agrees."""
    assert errors(rules) == []
    parse_document(route(rules))
    assert schema_accepts(route(rules))


def test_a_direct_response_parses_to_its_status_and_body() -> None:
    """`string` is sent as UTF-8, `bytes` is base64; no body is an empty one."""
    string, binary, empty = (parse_rules(yaml.safe_load(r), "r")[0].direct_response
                             for r in ACCEPTED[:3])
    assert string == DirectResponse(503, b"unknown error")
    assert binary == DirectResponse(200, b"\x00\x01\x02\xff")
    assert empty == DirectResponse(404, b"")


REFUSED = [
    ("[{directResponse: {status: 503}, backends: [{}]}]",
     ["spec.rules[0].backends: a rule with a directResponse answers the request itself: remove "
      "backends or the directResponse"]),
    ("[{directResponse: {status: 503}, fault: {abort: {httpStatus: 500}}, timeout: 1s}]",
     ["spec.rules[0].timeout: a rule with a directResponse answers the request itself: remove "
      "timeout or the directResponse",
      "spec.rules[0].fault: a rule with a directResponse answers the request itself: remove "
      "fault or the directResponse"]),
    ("[{directResponse: {status: 503}, redirect: {scheme: https}}]",
     ["spec.rules[0].directResponse: a rule with a redirect answers the request itself: remove "
      "directResponse or the redirect"]),
    ("[{directResponse: {status: 503}, headers: {request: {set: {x-a: b}}}}]",
     ["spec.rules[0].headers.request: a rule with a directResponse sends no request upstream: "
      "only headers.response applies"]),
    ("[{directResponse: {status: 600}}]",
     ["spec.rules[0].directResponse.status: must be between 200 and 599, got 600"]),
    ("[{directResponse: {body: {string: x}}}]",
     ["spec.rules[0].directResponse.status: field is required"]),
    ("[{directResponse: {status: 200, body: x}}]",
     ["spec.rules[0].directResponse.body: expected a mapping with exactly one of string, "
      "bytes, like {string: TEXT}"]),
    ("[{directResponse: {status: 200, body: {string: a, bytes: YQ==}}}]",
     ["spec.rules[0].directResponse.body: expected a mapping with exactly one of string, "
      "bytes, like {string: TEXT}"]),
    ("[{directResponse: {status: 200, body: {bytes: 'not base64!'}}}]",
     ["spec.rules[0].directResponse.body.bytes: expected base64 (RFC 4648, standard "
      "alphabet, padded)"]),
    ("[{directResponse: {status: 200, body: {string: '%s'}}}]" % ("x" * 4097),
     ["spec.rules[0].directResponse.body.string: body is 4097 bytes, at most 4096 are "
      "allowed (the proxy keeps it in memory, as Envoy's default limit)"]),
    ("[{directResponse: {status: 204, body: {string: x}}}]",
     ["spec.rules[0].directResponse.body: a 204 answer has no body (RFC 9110): remove the "
      "body"]),
    ("[{directResponse: {status: 205, body: {string: x}}}]",
     ["spec.rules[0].directResponse.body: a 205 answer has no body (RFC 9110): remove the "
      "body"]),
    ("[{directResponse: {status: 200, stauts: 1}}]",
     ["spec.rules[0].directResponse.stauts: unknown field, did you mean 'status'?"]),
]


@pytest.mark.parametrize(("rules", "expected"), REFUSED)
def test_broken_direct_responses_give_precise_messages(rules: str,
                                                       expected: list[str]) -> None:
    """Each broken directResponse rule is reported with its field path and reason, and the
    JSON Schema refuses it too (but the body's size, which only the parser measures)."""
    assert errors(rules) == expected
    if "4097" not in expected[0] and "answer has no body" not in expected[0]:
        assert not schema_accepts(route(rules))


def test_a_direct_response_is_an_http_only_action() -> None:
    """A TCP service's connections never see a directResponse: `meshctl apply` warns."""
    rules = parse_rules(yaml.safe_load(
        "[{matches: [{sourceLabels: {app: a}}], directResponse: {status: 503}},"
        " {backends: [{}]}]"), "spec.rules")
    assert http_only_fields(rules) == ["spec.rules[0].directResponse"]


# --- fault.abort.grpcStatus -----------------------------------------------------------------
@pytest.mark.parametrize(("abort", "expected"), [
    ("{grpcStatus: UNAVAILABLE}", Abort(503, 100.0, 14)),
    ("{grpcStatus: 8, percent: 50}", Abort(429, 50.0, 8)),
    ("{grpcStatus: '14'}", Abort(503, 100.0, 14)),
    ("{grpcStatus: DATA_LOSS}", Abort(500, 100.0, 15)),  # no HTTP status of its own
    ("{httpStatus: 500}", Abort(500, 100.0, None)),
])
def test_grpc_aborts_parse_to_the_code_and_its_http_status(abort: str,
                                                           expected: Abort) -> None:
    """A gRPC status by name or number; requests that are no gRPC call get its HTTP status
    (gRPC's mapping, else 500). The JSON Schema agrees."""
    rules = f"[{{backends: [{{}}], fault: {{abort: {abort}}}}}]"
    fault = parse_rules(yaml.safe_load(rules), "r")[0].fault
    assert fault is not None and fault.abort == expected
    assert schema_accepts(route(rules))


UNKNOWN_GRPC = (
    "spec.rules[0].fault.abort.grpcStatus: unknown gRPC status {}, expected a code name in "
    "upper case like UNAVAILABLE (CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, "
    "NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, "
    "ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS, UNAUTHENTICATED) "
    "or its number, 1-16")


@pytest.mark.parametrize(("abort", "expected"), [
    ("{httpStatus: 503, grpcStatus: UNAVAILABLE}",
     ["spec.rules[0].fault.abort: set exactly one of httpStatus, grpcStatus"]),
    ("{percent: 10}", ["spec.rules[0].fault.abort: set exactly one of httpStatus, grpcStatus"]),
    ("{grpcStatus: unavailable}", [UNKNOWN_GRPC.format("'unavailable'")]),
    ("{grpcStatus: 0}",
     ["spec.rules[0].fault.abort.grpcStatus: expected a gRPC status from 1 to 16 (OK, 0, is "
      "no abort), got 0"]),
    ("{grpcStatus: 17}",
     ["spec.rules[0].fault.abort.grpcStatus: expected a gRPC status from 1 to 16 (OK, 0, is "
      "no abort), got 17"]),
    ("{grpcStatus: OK}",
     ["spec.rules[0].fault.abort.grpcStatus: OK is no abort: name a failure like UNAVAILABLE"]),
    ("{grpcStatus: true}",
     ["spec.rules[0].fault.abort.grpcStatus: expected an integer, got a boolean"]),
    # digits other than ASCII's: int() raised ValueError on the first (a traceback from
    # meshctl validate), took the second as 14 where the schema refuses it
    ("{grpcStatus: '\u00b2'}", [UNKNOWN_GRPC.format("'²'")]),
    ("{grpcStatus: '\u0661\u0664'}", [UNKNOWN_GRPC.format("'١٤'")]),
])
def test_broken_grpc_aborts_give_precise_messages(abort: str, expected: list[str]) -> None:
    """Exactly one of httpStatus, grpcStatus; a code by its upper-case name or 1-16. The JSON
    Schema refuses them too."""
    rules = f"[{{backends: [{{}}], fault: {{abort: {abort}}}}}]"
    assert errors(rules) == expected
    assert not schema_accepts(route(rules))


# --- match withoutHeaders -------------------------------------------------------------------
class Request:
    """What matching reads of a request (proxy.policy.matching.RequestView)."""

    def __init__(self, path: str = "/", headers: dict[str, str] | None = None) -> None:
        self.method = "GET"
        self.path = path
        self.query = ""
        self.headers = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]


def test_without_headers_parses_like_headers_with_names_in_lower_case() -> None:
    """The same matcher map as `headers`; names in lower case, in the block's conditions."""
    block = parse_match({"withoutHeaders": {"X-Stable": {"present": True},
                                            "x-user": {"regex": "bo+b"}}}, "m")
    assert block.without_headers[0] == ("x-stable", StringMatch("present"))
    assert block.without_headers[1][0] == "x-user"
    assert block.http_conditions == ("withoutHeaders",)
    rules = parse_rules(yaml.safe_load(
        "[{matches: [{withoutHeaders: {x-a: {exact: b}}}], backends: [{}]}, {backends: [{}]}]"),
        "spec.rules")  # a block with only withoutHeaders does not match everything
    assert http_only_fields(rules) == ["spec.rules[0].matches[0].withoutHeaders"]


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, True),
    ({"x-user": "alice"}, True),
    ({"x-user": "bob"}, False),
    ({"x-stable": ""}, False),  # present, even empty
    ({"x-canary": "yes"}, True),
    ({"x-canary": "yes", "x-user": "bob"}, False),
])
def test_a_block_holds_only_if_no_without_header_matcher_does(headers: dict[str, str],
                                                               expected: bool) -> None:
    """The rules' own Match.matches and the proxy's compiled predicate agree, with and
    without another condition (`headers`) in the block."""
    plain = parse_match({"withoutHeaders": {"x-stable": {"present": True},
                                            "x-user": {"exact": "bob"}}}, "m")
    both = parse_match({"path": {"prefix": "/beta"}, "headers": {"x-canary": {"present": True}},
                        "withoutHeaders": {"x-stable": {"present": True},
                                           "x-user": {"exact": "bob"}}}, "m")
    assert plain.matches("GET", "/", headers, {}) is expected
    assert compile_matches((plain,))(Request("/", headers)) is expected
    with_canary = expected and "x-canary" in headers
    assert both.matches("GET", "/beta/1", headers, {}) is with_canary
    assert compile_matches((both,))(Request("/beta/1", headers)) is with_canary
    assert compile_matches((both,))(Request("/other", headers)) is False


@pytest.mark.parametrize(("block", "expected"), [
    ("{withoutHeaders: {x-a: {exact: b, prefix: c}}}",
     ["spec.rules[0].matches[0].withoutHeaders.x-a: expected a mapping with exactly one of "
      "exact, prefix, regex, present, like {exact: VALUE}"]),
    ("{withoutHeaders: {x-a: {exact: b}, X-A: {exact: c}}}",
     ["spec.rules[0].matches[0].withoutHeaders.X-A: duplicate header name (same as 'x-a')"]),
    ("{withoutHeaders: {'a b': {exact: c}}}",
     ["spec.rules[0].matches[0].withoutHeaders.a b: invalid value 'a b', expected an HTTP "
      "header name"]),
    ("{withoutHeaders: [x-a]}",
     ["spec.rules[0].matches[0].withoutHeaders: expected a mapping, got a list"]),
])
def test_broken_without_headers_give_precise_messages(block: str,
                                                      expected: list[str]) -> None:
    """Each broken withoutHeaders is reported with its path; the JSON Schema refuses it too
    (but the duplicate in another case, which only the parser sees)."""
    rules = f"[{{matches: [{block}], backends: [{{}}]}}]"
    assert errors(rules) == expected
    if "duplicate" not in expected[0]:
        assert not schema_accepts(route(rules))
    assert schema_accepts(route("[{matches: [{withoutHeaders: {x-a: {present: true}}}], "
                                "backends: [{}]}]"))


# --- match ignoreUriCase --------------------------------------------------------------------
@pytest.mark.parametrize(("path", "exact", "prefix"), [
    ("/Api/Items", True, True),
    ("/api/items", True, True),
    ("/API/ITEMS", True, True),
    ("/api/items/7", False, True),
    ("/apix/items", False, False),
    ("/api", False, False),
])
def test_ignore_uri_case_compares_exact_and_prefix_paths_in_any_case(
        path: str, exact: bool, prefix: bool) -> None:
    """Match.matches and the proxy's compiled predicate agree; without the flag the same
    paths are compared as they are."""
    for kind, expected in (("exact", exact), ("prefix", prefix)):
        block = parse_match({"path": {kind: "/Api/Items" if kind == "exact" else "/API/"},
                             "ignoreUriCase": True}, "m")
        assert block.matches("GET", path, {}, {}) is expected, (kind, path)
        assert compile_matches((block,))(Request(path)) is expected, (kind, path)
    strict = parse_match({"path": {"prefix": "/API/"}}, "m")
    assert compile_matches((strict,))(Request(path)) is path.startswith("/API/")


def test_a_case_insensitive_rewrite_replaces_the_prefix_in_any_case() -> None:
    """RewritePolicy strips the prefix the block matched whatever its case in the path."""
    from proxy.layers import RewritePolicy

    class Exchange(Request):
        query = ""
        target = b""

    blocks = (parse_match({"path": {"prefix": "/Old/"}, "ignoreUriCase": True}, "m"),
              parse_match({"path": {"prefix": "/keep/"}}, "m"))
    rewrite = RewritePolicy("/new/", blocks)
    for path, target in (("/OLD/a/B", b"/new/a/B"), ("/old/", b"/new/"),
                         ("/keep/x", b"/new/x"), ("/KEEP/x", b"/new/")):
        ex = Exchange(path)
        rewrite(ex)  # type: ignore[arg-type]
        assert ex.target == target, path


@pytest.mark.parametrize(("block", "expected"), [
    ("{path: {regex: '/a.*'}, ignoreUriCase: true}",
     ["spec.rules[0].matches[0].ignoreUriCase: applies to an exact or prefix path only; a "
      "regex says it itself: start it with (?i)"]),
    ("{headers: {x-a: {exact: b}}, ignoreUriCase: true}",
     ["spec.rules[0].matches[0].ignoreUriCase: applies to the block's path: set path "
      "{exact: ...} or {prefix: ...}"]),
    ("{path: {prefix: /a}, ignoreUriCase: 'yes'}",
     ["spec.rules[0].matches[0].ignoreUriCase: expected true or false, got a string"]),
])
def test_broken_ignore_uri_case_gives_precise_messages(block: str,
                                                       expected: list[str]) -> None:
    """ignoreUriCase needs an exact or prefix path in its block; the JSON Schema agrees."""
    rules = f"[{{matches: [{block}], backends: [{{}}]}}]"
    assert errors(rules) == expected
    assert not schema_accepts(route(rules))
    for fine in ("{path: {prefix: /a}, ignoreUriCase: true}",
                 "{path: {regex: '/a'}, ignoreUriCase: false}"):
        assert errors(f"[{{matches: [{fine}], backends: [{{}}]}}]") == []
        assert schema_accepts(route(f"[{{matches: [{fine}], backends: [{{}}]}}]"))


def test_shift_refuses_a_rule_that_answers_directly() -> None:
    """`meshctl shift` has no backends to re-weight in a directResponse rule."""
    from meshctl.commands.shift import ShiftRefused, Weights, plan_shift

    route = {"spec": {"host": "web", "rules": [{"directResponse": {"status": 503}}]}}
    with pytest.raises(ShiftRefused, match="answers with a directResponse and has no backends"):
        plan_shift(route, ["v1"], Weights(positional=(100,)))

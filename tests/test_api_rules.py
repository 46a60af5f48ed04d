"""Tests for the shared route-rule format (meshctl.api.rules)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from meshctl.api.errors import ValidationError
from meshctl.api.matches import Match, StringMatch, parse_match
from meshctl.api.rules import (
    DEFAULT_RETRY_ON,
    Backend,
    Backoff,
    parse_rules,
)

FULL_RULE = """
- name: jason
  matches:
    - path: {regex: "^/a/[0-9]+$"}
      method: GET
      headers: {End-User: {exact: jason}, x-canary: {present: true}}
      query: {q: {prefix: x}}
  backends:
    - {subset: v1, weight: 90}
    - {service: reviews-next, subset: v3, weight: 10}
  timeout: 3s
  retries: {attempts: 2, perTryTimeout: 1s, retryOn: [5xx, retriable-status-codes],
            retriableStatusCodes: [503], backoff: {baseInterval: 25ms, maxInterval: 250ms},
            allowNonIdempotent: true}
  fault: {delay: {fixedDelay: 7s, percent: 100}, abort: {httpStatus: 500, percent: 10}}
  mirror: {subset: v2, percent: 50}
  headers: {request: {set: {X-A: "1"}, add: {x-b: ""}, remove: [X-C]},
            response: {set: {}, add: {}, remove: []}}
- backends: [{subset: v1}]
"""


def errors(data: Any) -> list[str]:
    """The issue lines parse_rules reports for ``data`` (YAML text or a value)."""
    value = yaml.safe_load(data) if isinstance(data, str) else data
    with pytest.raises(ValidationError) as err:
        parse_rules(value, "spec.rules")
    return [str(issue) for issue in err.value.issues]


def test_full_rule_parses_into_typed_values() -> None:
    """Every field of the documented format lands in the frozen dataclasses, normalised."""
    first, second = parse_rules(yaml.safe_load(FULL_RULE), "spec.rules")
    assert first.name == "jason"
    (match,) = first.matches
    assert match.path is not None and match.path.kind == "regex"
    assert match.methods == ("GET",)
    assert [name for name, _ in match.headers] == ["end-user", "x-canary"]
    assert first.backends == (Backend(None, "v1", 90), Backend("reviews-next", "v3", 10))
    assert first.timeout == 3.0
    assert first.retries is not None
    assert first.retries.retriable_status_codes == (503,)
    assert first.retries.backoff == Backoff(0.025, 0.25)
    assert first.retries.allow_non_idempotent is True
    assert first.fault is not None and first.fault.abort is not None
    assert first.fault.abort.http_status == 500 and first.fault.abort.percent == 10
    assert first.mirror is not None and first.mirror.percent == 50
    assert first.headers.request.set == (("x-a", "1"),)
    assert first.headers.request.add == (("x-b", ""),)
    assert first.headers.request.remove == ("x-c",)
    assert second.backends == (Backend(None, "v1", 100),)
    assert second.matches == ()


def test_retry_defaults_are_conservative() -> None:
    """Retries without retryOn retry only unanswered failures, with 25ms..250ms backoff."""
    (rule,) = parse_rules([{"backends": [{}], "retries": {"attempts": 1}}], "rules")
    assert rule.retries is not None
    assert rule.retries.retry_on == DEFAULT_RETRY_ON
    assert rule.retries.backoff == Backoff(0.025, 0.25)
    assert rule.retries.allow_non_idempotent is False


@pytest.mark.parametrize(("rules", "expected"), [
    ("[{backends: [{subset: v1, weight: 90}, {subset: v3, weight: 11}]}]",
     ["spec.rules[0].backends: weights sum to 101, must be 100"]),
    ("[{backends: [{subset: v1}], matches: [{path: {prefix: /}}]}, "
     "{backends: [{subset: v1, weight: 50}, {subset: v2}]}]",
     ["spec.rules[1].backends[1].weight: field is required when a rule has more than one backend"]),
    ("[{backends: [{subset: v1, weight: 50}, {subset: v1, weight: 50}]}]",
     ["spec.rules[0].backends[1].subset: duplicate subset 'v1', already in backends[0]"]),
    ("[{backends: [{subset: v1, weigth: 100}]}]",
     ["spec.rules[0].backends[0].weigth: unknown field, did you mean 'weight'?"]),
    ("[{backends: [{subset: v1}], matches: [{headers: {end-user: {exactly: jason}}}]}]",
     ["spec.rules[0].matches[0].headers.end-user: unknown matcher 'exactly', "
      "expected one of exact, prefix, regex, present"]),
    ("[{backends: [{subset: v1}], matches: [{path: {present: true}}]}]",
     ["spec.rules[0].matches[0].path: unknown matcher 'present', expected one of exact, prefix, "
      "regex"]),
    ("[{backends: [{subset: v1}], matches: [{path: {regex: '('}}]}]",
     ["spec.rules[0].matches[0].path.regex: invalid regex '(': missing ), unterminated "
      "subpattern at position 0"]),
    ("[{backends: [{subset: v1}], matches: [{path: {prefix: api}}]}]",
     ["spec.rules[0].matches[0].path.prefix: must start with '/', got 'api'"]),
    ("[{backends: [{subset: v1}], matches: [{method: GET, methods: [HEAD]}]}]",
     ["spec.rules[0].matches[0].methods: set either method or methods, not both"]),
    ("[{backends: [{subset: v1}], timeout: 0s}]",
     ["spec.rules[0].timeout: must be a positive duration, got 0s"]),
    ("[{backends: [{subset: v1}], timeout: 3}]",
     ["spec.rules[0].timeout: expected a duration string like '250ms' or '3s', got 3"]),
    ("[{backends: [{subset: v1}], fault: {abort: {httpStatus: 600}}}]",
     ["spec.rules[0].fault.abort.httpStatus: must be between 200 and 599, got 600"]),
    ("[{backends: [{subset: v1}], fault: {delay: {fixedDelay: 1s, percent: 101}}}]",
     ["spec.rules[0].fault.delay.percent: must be between 0 and 100, got 101"]),
    ("[{backends: [{subset: v1}], fault: {}}]",
     ["spec.rules[0].fault: set delay, abort or both"]),
    ("[{backends: [{subset: v1}], retries: {attempts: 1, retriableStatusCodes: [503]}}]",
     ["spec.rules[0].retries.retriableStatusCodes: has no effect unless retryOn contains "
      "retriable-status-codes"]),
    ("[{backends: [{subset: v1}], retries: {attempts: 1, backoff: {baseInterval: 1s, "
     "maxInterval: 100ms}}}]",
     ["spec.rules[0].retries.backoff.maxInterval: must not be shorter than baseInterval"]),
    ("[{backends: [{subset: v1}], retries: {perTryTimeout: 1s}}]",
     ["spec.rules[0].retries.attempts: field is required"]),
    ("[{backends: [{subset: v1}], headers: {request: {set: {x-a: \"a\\r\\nb: c\"}}}}]",
     ["spec.rules[0].headers.request.set.x-a: invalid value 'a\\r\\nb: c', expected a header "
      "value: visible ASCII, spaces and tabs (or latin-1 letters), no control characters"]),
    ("[{matches: [{scheme: {exact: ftp}}], backends: [{subset: v1}]}]",
     ["spec.rules[0].matches[0].scheme.exact: expected http or https, got 'ftp'"]),
    # the sidecar writes it as latin-1: the whole config would be refused by every sidecar
    ("[{backends: [{subset: v1}], headers: {response: {add: {x-city: \"東京\"}}}}]",
     ["spec.rules[0].headers.response.add.x-city: invalid value '東京', expected a header "
      "value: visible ASCII, spaces and tabs (or latin-1 letters), no control characters"]),
    ("[{backends: [{subset: v1}], headers: {request: {set: {Content-Length: \"0\"}}, "
     "response: {add: {transfer-encoding: chunked}, remove: [connection]}}}]",
     ["spec.rules[0].headers.request.set.Content-Length: 'content-length' frames the message "
      "or is hop-by-hop; the proxy sets it and it cannot be edited",
      "spec.rules[0].headers.response.add.transfer-encoding: 'transfer-encoding' frames the "
      "message or is hop-by-hop; the proxy sets it and it cannot be edited",
      "spec.rules[0].headers.response.remove[0]: 'connection' frames the message or is "
      "hop-by-hop; the proxy sets it and it cannot be edited"]),
    ("[{backends: [{subset: v1}]}, {backends: [{subset: v2}]}]",
     ["spec.rules[1]: unreachable: rules[0] matches every request"]),
    ("[{name: a, backends: [{}], matches: [{method: GET}]}, {name: a, backends: [{}]}]",
     ["spec.rules[1].name: duplicate rule name 'a', already used by rules[0]"]),
    ("[{backends: [{}], rateLimit: {requestsPerSecond: 0, burst: 0, per-source: true}}]",
     ["spec.rules[0].rateLimit.requestsPerSecond: must be at least 0.001, got 0",
      "spec.rules[0].rateLimit.burst: must be at least 1, got 0",
      "spec.rules[0].rateLimit.per-source: unknown field, did you mean 'perSource'?"]),
    ("[{backends: [{}], rateLimit: {burst: 3}}]",
     ["spec.rules[0].rateLimit.requestsPerSecond: field is required"]),
    ("[{redirect: {scheme: https}, rateLimit: {requestsPerSecond: 5}}]",
     ["spec.rules[0].rateLimit: a rule with a redirect answers the request itself: remove "
      "rateLimit or the redirect"]),
    ("[]", ["spec.rules: at least one rule is required"]),
    ("{backends: []}", ["spec.rules: expected a list, got a mapping"]),
    ("[{backends: [{subset: V1, weight: true}]}]",
     ["spec.rules[0].backends[0].subset: invalid value 'V1', expected a subset name "
      "(DNS-1123 label)",
      "spec.rules[0].backends[0].weight: expected an integer, got a boolean"]),
])
def test_invalid_rules_give_precise_messages(rules: str, expected: list[str]) -> None:
    """Each broken rule is reported with its exact field path and reason."""
    assert errors(rules) == expected


def test_all_problems_of_all_rules_are_reported() -> None:
    """Problems in several rules and fields are reported together, in document order."""
    found = errors("""
    - backends: [{subset: v1, weight: 90}, {subset: v3, weight: 11}]
      matches: [{method: GET}]
    - backends: [{subset: v1}]
      timeout: soon
      mirror: {percent: -1}
    """)
    assert found == [
        "spec.rules[0].backends: weights sum to 101, must be 100",
        "spec.rules[1].timeout: invalid duration 'soon', expected a number and unit like 250ms, "
        "1.5s, 2m or 24h",
        "spec.rules[1].mirror.percent: must be between 0 and 100, got -1",
    ]


def test_matchers_follow_documented_semantics() -> None:
    """exact/prefix/regex (full match)/present behave as documented, header names lower-cased."""
    match = parse_match({
        "path": {"regex": "/a/[0-9]+"},
        "methods": ["GET", "HEAD"],
        "headers": {"End-User": {"exact": "jason"}, "x-off": {"present": False}},
        "query": {"q": {"prefix": "ab"}},
    }, "m")
    ok = {"end-user": "jason"}
    assert match.matches("GET", "/a/12", ok, {"q": "abc"})
    assert not match.matches("GET", "/a/12x", ok, {"q": "abc"})  # regex must match whole path
    assert not match.matches("POST", "/a/12", ok, {"q": "abc"})
    assert not match.matches("GET", "/a/12", {"end-user": "Jason"}, {"q": "abc"})
    assert not match.matches("GET", "/a/12", {**ok, "x-off": ""}, {"q": "abc"})
    assert not match.matches("GET", "/a/12", ok, {})
    assert Match().matches("DELETE", "/anything", {}, {})


@given(st.text(max_size=8), st.text(max_size=8))
def test_prefix_matcher_agrees_with_startswith(prefix: str, value: str) -> None:
    """A prefix matcher matches exactly the strings that start with the prefix."""
    assert StringMatch("prefix", prefix).matches(value) == value.startswith(prefix)
    assert StringMatch("prefix", prefix).matches(None) is False


@given(st.lists(st.integers(min_value=0, max_value=100), min_size=1, max_size=6))
def test_weights_are_accepted_iff_they_sum_to_100(weights: list[int]) -> None:
    """A split of distinct subsets parses exactly when its weights add up to 100."""
    backends = [{"subset": f"v{i}", "weight": w} for i, w in enumerate(weights)]
    try:
        (rule,) = parse_rules([{"backends": backends}], "spec.rules")
    except ValidationError as err:
        assert sum(weights) != 100
        assert str(err) == f"spec.rules[0].backends: weights sum to {sum(weights)}, must be 100"
    else:
        assert sum(weights) == 100
        assert [b.weight for b in rule.backends] == weights


def test_http_only_fields_name_what_a_tcp_connection_never_sees() -> None:
    """Path, methods, headers, query and scheme conditions and every HTTP action are listed
    with their field path; sourceLabels, sourceNamespace and backends are not."""
    from meshctl.api.rules import http_only_fields

    rules = parse_rules(yaml.safe_load(FULL_RULE), "spec.rules")
    assert http_only_fields(rules) == [
        "spec.rules[0].matches[0].path", "spec.rules[0].matches[0].methods",
        "spec.rules[0].matches[0].headers", "spec.rules[0].matches[0].query",
        "spec.rules[0].timeout", "spec.rules[0].retries", "spec.rules[0].fault",
        "spec.rules[0].mirror", "spec.rules[0].headers"]
    plain = parse_rules(yaml.safe_load("""
- matches: [{sourceLabels: {app: web}, sourceNamespace: shop}, {scheme: {exact: https}}]
  backends: [{subset: v1, weight: 80}, {service: other, weight: 20}]
- backends: [{subset: v1}]
"""), "spec.rules")
    assert http_only_fields(plain) == ["spec.rules[0].matches[1].scheme"]


def test_rate_limit_is_destination_policys() -> None:
    """A rule's rateLimit has DestinationPolicy.rateLimit's fields, defaults and dataclass
    (fractional rates too); it is HTTP-only: a TCP service's connections never see it."""
    from meshctl.api.policy import RateLimit
    from meshctl.api.rules import http_only_fields

    rules = parse_rules(yaml.safe_load("""
- matches: [{path: {exact: /login}, method: POST}]
  backends: [{}]
  rateLimit: {requestsPerSecond: 0.5, burst: 3, perSource: true}
- backends: [{}]
  rateLimit: {requestsPerSecond: 2.5}
"""), "spec.rules")
    assert rules[0].rate_limit == RateLimit(0.5, 3, True)
    assert rules[1].rate_limit == RateLimit(2.5, 3, False)  # burst: one second's worth
    assert "spec.rules[1].rateLimit" in http_only_fields(rules)


def test_a_route_file_names_the_rate_limit_field_that_is_wrong() -> None:
    """Through the resource loader: the file, the document and the field path."""
    from meshctl.api.resources import load_documents

    text = ("apiVersion: ami.mesh/v1alpha1\nkind: Route\nmetadata: {name: web}\n"
            "spec: {host: web, rules: [{backends: [{}]}]}\n---\n"
            "apiVersion: ami.mesh/v1alpha1\nkind: Route\nmetadata: {name: api}\n"
            "spec:\n  host: api\n  rules:\n    - backends: [{}]\n"
            "      rateLimit: {requestsPerSecond: fast}\n")
    with pytest.raises(ValidationError) as err:
        load_documents(text, "routes.yaml")
    assert str(err.value) == ("routes.yaml doc 2: spec.rules[0].rateLimit.requestsPerSecond: "
                              "expected a number, got a string")

"""Route match blocks: which requests a rule (or a Gateway rule) is for, by path, method,
headers, query parameters, scheme and the calling proxy's labels and namespace."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshctl.api import fields as F
from meshctl.api.errors import fail
from meshctl.api.fields import Fields

MATCHERS = ("exact", "prefix", "regex", "present")
PATH_MATCHERS = ("exact", "prefix", "regex")
SCHEMES = ("http", "https")
_METHOD = F.string(F.METHOD, "an upper-case HTTP method like GET")
_HEADER_NAME = F.string(F.HEADER_NAME, "an HTTP header name")
# A header sent more than once is matched as its values joined in order, as Envoy's matchers
# read it (HeaderUtility::getAllOfHeaderAsString): `x-user: a` and `x-user: b` are `a,b`.
# Cookie crumbs (HTTP/2 may split a Cookie into several fields) join as one Cookie line, as
# Envoy's HTTP/2 codec and RFC 9113 8.2.3 join them.
HEADER_JOIN = ","
COOKIE_JOIN = "; "


def joined(name: str, values: list[str]) -> str | None:
    """A header's values (each trimmed, in order) as every header matcher reads them; None
    when the request does not carry it."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return (COOKIE_JOIN if name == "cookie" else HEADER_JOIN).join(values)


@dataclass(frozen=True, slots=True)
class StringMatch:
    """One matcher: exact/prefix text, a regex (full match), or header presence."""

    kind: str
    value: str = ""
    present: bool = True
    pattern: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def matches(self, actual: str | None) -> bool:
        """Whether ``actual`` (None = absent) satisfies this matcher."""
        if self.kind == "present":
            return (actual is not None) == self.present
        if actual is None:
            return False
        if self.kind == "exact":
            return actual == self.value
        if self.kind == "prefix":
            return actual.startswith(self.value)
        return self.pattern is not None and self.pattern.fullmatch(actual) is not None


@dataclass(frozen=True, slots=True)
class Match:
    """One match block: all of its conditions must hold (an empty block matches everything)."""

    path: StringMatch | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, StringMatch], ...] = ()  # header names in lower case
    query: tuple[tuple[str, StringMatch], ...] = ()
    # Who is calling: decided once per proxy when its config is compiled, not per request.
    source_labels: tuple[tuple[str, str], ...] = ()
    source_namespace: str | None = None
    # The scheme the caller used (`http`, or `https` at an HTTPS gateway): also settled when a
    # listener's routes are compiled, since a listener has one scheme.
    scheme: StringMatch | None = None
    # Istio's withoutHeaders: the block holds only if none of these matchers does
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    # Istio's ignoreUriCase: an exact or prefix path compared without regard to case
    ignore_uri_case: bool = False

    def applies_to(self, namespace: str, labels: Mapping[str, str],
                   scheme: str = "http") -> bool:
        """Whether a proxy in ``namespace`` with ``labels``, on a listener for ``scheme``, is
        a source this block accepts."""
        return ((self.source_namespace is None or self.source_namespace == namespace)
                and all(labels.get(k) == v for k, v in self.source_labels)
                and (self.scheme is None or self.scheme.matches(scheme)))

    def path_matches(self, path: str) -> bool:
        """Whether ``path`` satisfies this block's path matcher (there must be one)."""
        assert self.path is not None
        if self.ignore_uri_case:
            return StringMatch(self.path.kind, self.path.value.lower()).matches(path.lower())
        return self.path.matches(path)

    @property
    def http_conditions(self) -> tuple[str, ...]:
        """The fields of this block only an HTTP request has (a TCP connection never
        matches them); sourceLabels and sourceNamespace are not among them."""
        return tuple(name for name, value in (
            ("path", self.path), ("methods", self.methods), ("headers", self.headers),
            ("query", self.query), ("scheme", self.scheme),
            ("withoutHeaders", self.without_headers)) if value)

    def matches(self, method: str, path: str, headers: Mapping[str, str],
                query: Mapping[str, str]) -> bool:
        """Whether a request matches; ``headers`` keys must be lower case."""
        return ((self.path is None or self.path_matches(path))
                and (not self.methods or method in self.methods)
                and all(m.matches(headers.get(name)) for name, m in self.headers)
                and all(m.matches(query.get(name)) for name, m in self.query)
                and not any(m.matches(headers.get(name)) for name, m in self.without_headers))



def parse_match_blocks(data: object, path: str) -> tuple[Match, ...]:
    """Parse a list of match blocks (also used by Gateway rules)."""
    return F.list_of(parse_match)(data, path)


def parse_match(data: object, path: str) -> Match:
    """Parse one match block."""
    f = Fields(data, path)
    path_match = f.optional("path", _path_matcher)
    method = f.optional("method", _METHOD)
    methods = f.optional("methods", F.list_of(_METHOD, 1))
    if method is not None and methods is not None:
        f.add(f.at("methods"), "set either method or methods, not both")
    headers = f.value("headers", _matcher_map(lower=True), ())
    query = f.value("query", _matcher_map(lower=False), ())
    source_labels = f.value("sourceLabels", F.labels, {})
    source_namespace = f.optional("sourceNamespace", F.string(F.DNS_LABEL, "a namespace"))
    scheme = f.optional("scheme", _scheme_matcher)
    without = f.value("withoutHeaders", _matcher_map(lower=True), ())
    ignore_case = f.value("ignoreUriCase", F.boolean, False)
    if ignore_case and path_match is not None and path_match.kind == "regex":
        f.add(f.at("ignoreUriCase"), "applies to an exact or prefix path only; a regex says "
                                     "it itself: start it with (?i)")
    elif ignore_case and not f.has("path"):
        f.add(f.at("ignoreUriCase"), "applies to the block's path: set path {exact: ...} or "
                                     "{prefix: ...}")
    f.finish()
    return Match(path_match, (method,) if method else methods or (), headers, query,
                 tuple(sorted(source_labels.items())), source_namespace, scheme, without,
                 ignore_case)


def _scheme_matcher(data: object, path: str) -> StringMatch:
    result = string_matcher(data, path, ("exact", "prefix", "regex"))
    if result.kind == "exact" and result.value not in SCHEMES:
        fail(f"{path}.exact", f"expected http or https, got {result.value!r}")
    return result


def _path_matcher(data: object, path: str) -> StringMatch:
    result = string_matcher(data, path, PATH_MATCHERS)
    if result.kind in ("exact", "prefix") and not result.value.startswith("/"):
        fail(f"{path}.{result.kind}", f"must start with '/', got {result.value!r}")
    return result


def _header_matcher(data: object, path: str) -> StringMatch:
    return string_matcher(data, path, MATCHERS)


def string_matcher(data: object, path: str, kinds: tuple[str, ...]) -> StringMatch:
    """`{KIND: VALUE}` with KIND one of ``kinds``; the error names the field."""
    expected = ", ".join(kinds)
    if not isinstance(data, Mapping) or len(data) != 1:
        fail(path, f"expected a mapping with exactly one of {expected}, like {{exact: VALUE}}")
    ((kind, value),) = data.items()
    if kind not in kinds:
        fail(path, f"unknown matcher '{kind}', expected one of {expected}")
    where = f"{path}.{kind}"
    if kind == "present":
        return StringMatch("present", present=F.boolean(value, where))
    text = F.string()(value, where) if kind != "exact" or value != "" else ""
    if kind != "regex":
        return StringMatch(kind, text)
    try:
        return StringMatch("regex", text, pattern=compile_regex(text))
    except re.error as err:
        fail(where, f"invalid regex {text!r}: {err}")


# A POSIX class inside a bracket expression (`[[:digit:]]`, `[[:^space:]]`)
_POSIX_CLASS = re.compile(r"\[:\^?[a-z]+:\]")


def compile_regex(text: str) -> re.Pattern[str]:
    """A match regex read as RE2 reads it (Envoy's, so Istio's and the Gateway API's), or
    re.error where Python's re would read the same text differently: `\\d`, `\\w`, `\\s` and
    `\\b` are ASCII-only in RE2 (Python's default is Unicode: compiled with re.ASCII), and a
    POSIX class `[[:digit:]]`, a class in RE2, is in Python the set of `[:digt` followed by a
    literal `]` (refused, with what to write instead)."""
    found = _POSIX_CLASS.search(text)
    if found is not None:
        raise re.error(f"POSIX class {found.group(0)} is not read as RE2 reads it (Python's re "
                       "takes it for a set of its characters); write the characters, like "
                       "[0-9] for [:digit:]")
    return re.compile(text, re.ASCII)


def _matcher_map(lower: bool) -> F.Conv[tuple[tuple[str, StringMatch], ...]]:
    key = _HEADER_NAME if lower else F.string()
    convert = F.string_map(key, _header_matcher)

    def parse(data: object, path: str) -> tuple[tuple[str, StringMatch], ...]:
        items = convert(data, path)
        if not lower:
            return tuple(items.items())
        seen: dict[str, str] = {}
        for name in items:
            if name.lower() in seen:
                fail(F.join(path, name), f"duplicate header name (same as '{seen[name.lower()]}')")
            seen[name.lower()] = name
        return tuple((name.lower(), matcher) for name, matcher in items.items())

    return parse

"""Route-rule matches compiled into one fast predicate over a request view."""

import re
from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import parse_qsl

from meshctl.api.matches import COOKIE_JOIN, HEADER_JOIN, Match, StringMatch

ValueCheck = Callable[[str | None], bool]
# (path check, allowed methods, header checks, query checks); None / () = no condition.
_Block = tuple[
    Callable[[str], bool] | None,
    frozenset[str | bytes] | None,
    tuple[tuple[str, ValueCheck], ...],
    tuple[tuple[str, ValueCheck], ...],
]


class RequestView(Protocol):
    """What matching reads from a request; ``path`` is already normalised."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def query(self) -> str:
        """The raw query string, without the ``?``."""
        ...

    @property
    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        """The header lines as parsed: (name, value) bytes, in the order sent."""
        ...


_JOIN = HEADER_JOIN.encode()
_COOKIE_JOIN = COOKIE_JOIN.encode()


def joined_header(request: RequestView, name_lower: str) -> str | None:
    """A header's values (lower-case name), each trimmed, joined in order with ',' (cookie
    crumbs with '; '), or None when absent: what every header matcher reads, as Envoy's do
    (meshctl.api.matches.joined). One pass; a copy only for a header sent more than once.

    A function, not an Exchange method: a method more on that class costs every request of
    every proxy (~150 instructions, bench.micro), whether a matcher calls it or not."""
    key = name_lower.encode("latin-1")
    found: bytes | None = None
    for n, v in request.headers:
        if len(n) == len(key) and n.lower() == key:
            v = v.strip(b" \t")
            found = v if found is None else found + (
                _COOKIE_JOIN if key == b"cookie" else _JOIN) + v
    return None if found is None else found.decode("latin-1")


def hash_key(headers: Sequence[tuple[bytes, bytes]], name_lower: str) -> str | None:
    """What CONSISTENT_HASH by a header keys a request by: its value (trimmed), or, sent more
    than once, its values sorted and joined with ',', so their order does not move the
    request (Envoy's HeaderHashMethod hashes every value, sorted); None when absent."""
    key = name_lower.encode("latin-1")
    values = [v.strip(b" \t") for n, v in headers if len(n) == len(key) and n.lower() == key]
    if not values:
        return None
    return (values[0] if len(values) == 1 else _JOIN.join(sorted(values))).decode("latin-1")


def parse_query(raw: str) -> dict[str, str]:
    """Decode a query string; a repeated parameter keeps its first value, ``?flag`` is ``''``."""
    params: dict[str, str] = {}
    for name, value in parse_qsl(raw, keep_blank_values=True):
        params.setdefault(name, value)
    return params


def _value_check(m: StringMatch) -> ValueCheck:
    """One matcher as a closure specialised to its kind (no per-call dispatch)."""
    value = m.value
    if m.kind == "present":
        present = m.present
        return lambda actual: (actual is not None) == present
    if m.kind == "exact":
        return lambda actual: actual == value
    if m.kind == "prefix":
        return lambda actual: actual is not None and actual.startswith(value)
    if m.kind == "regex":
        # RE2/Envoy semantics: the whole value, ASCII \d \w \s \b (meshctl.api.matches)
        fullmatch = (m.pattern or re.compile(value, re.ASCII)).fullmatch
        return lambda actual: actual is not None and fullmatch(actual) is not None
    raise ValueError(f"unknown matcher kind {m.kind!r}")


def _negated(check: ValueCheck) -> ValueCheck:
    """A withoutHeaders matcher: the block holds only if the header's matcher does not."""
    return lambda actual: not check(actual)


def _path_check(m: StringMatch, ignore_case: bool = False) -> Callable[[str], bool]:
    value = m.value
    if ignore_case and m.kind in ("exact", "prefix"):  # ignoreUriCase
        folded = value.lower()
        if m.kind == "exact":
            return lambda path: path.lower() == folded
        return lambda path: path.lower().startswith(folded)
    if m.kind == "exact":
        return lambda path: path == value
    if m.kind == "prefix":
        return lambda path: path.startswith(value)
    if m.kind == "regex":
        fullmatch = (m.pattern or re.compile(value, re.ASCII)).fullmatch
        return lambda path: fullmatch(path) is not None
    raise ValueError(f"matcher kind {m.kind!r} is not valid for a path")


def _compile_block(block: Match) -> _Block:
    return (
        _path_check(block.path, block.ignore_uri_case) if block.path is not None else None,
        # both str and bytes forms: the proxy hands the method over as parsed bytes
        frozenset[str | bytes]((*block.methods, *(m.encode() for m in block.methods)))
        if block.methods
        else None,
        (*((name.lower(), _value_check(m)) for name, m in block.headers),
         *((name.lower(), _negated(_value_check(m))) for name, m in block.without_headers)),
        tuple((name, _value_check(m)) for name, m in block.query),
    )


def _always(request: RequestView) -> bool:
    return True


def compile_matches(blocks: Sequence[Match]) -> Callable[[RequestView], bool]:
    """A predicate true when any block holds (all conditions of a block must); no blocks = all.

    Compiled once per configuration; per request it does no dispatch on matcher kinds and
    parses the query string only if a block that reaches its query conditions needs it.
    """
    compiled = tuple(_compile_block(b) for b in blocks)
    if not compiled or any(c == (None, None, (), ()) for c in compiled):
        return _always

    def matches(request: RequestView) -> bool:
        params: dict[str, str] | None = None
        for path_check, methods, headers, query in compiled:
            if path_check is not None and not path_check(request.path):
                continue
            if methods is not None and request.method not in methods:
                continue
            for name, check in headers:
                if not check(joined_header(request, name)):
                    break
            else:
                if not query:
                    return True
                if params is None:
                    params = parse_query(request.query)
                for name, check in query:
                    if not check(params.get(name)):
                        break
                else:
                    return True
        return False

    return matches

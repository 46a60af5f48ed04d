"""Tests for proxy.policy.matching, against blocks parsed by meshctl.api.rules."""

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

from hypothesis import given
from hypothesis import strategies as st

from meshctl.api.matches import Match, StringMatch, parse_match_blocks
from proxy.policy.matching import RequestView, compile_matches, parse_query


@dataclass
class Req:
    """A fake request view; counts how often the query string is read."""

    method: str = "GET"
    path: str = "/"
    raw_query: str = ""
    header_map: dict[str, str] = field(default_factory=dict)
    query_reads: int = 0

    @property
    def query(self) -> str:
        """The raw query string (each read is counted)."""
        self.query_reads += 1
        return self.raw_query

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header lines, one per entry of ``header_map``."""
        return [(k.encode(), v.encode()) for k, v in self.header_map.items()]


def compiled(data: object) -> Callable[[RequestView], bool]:
    """Parse match blocks with the real parser and compile them."""
    return compile_matches(parse_match_blocks(data, "matches"))


def test_no_blocks_and_empty_block_match_everything() -> None:
    """An empty match list, or any empty block, matches every request."""
    assert compiled([])(Req(method="DELETE", path="/x"))
    assert compiled([{"path": {"exact": "/a"}}, {}])(Req(path="/b"))


def test_path_kinds() -> None:
    """exact is equality, prefix is startswith, regex must match the whole path."""
    assert compiled([{"path": {"exact": "/a"}}])(Req(path="/a"))
    assert not compiled([{"path": {"exact": "/a"}}])(Req(path="/a/"))
    assert compiled([{"path": {"prefix": "/api"}}])(Req(path="/api/v1"))
    assert not compiled([{"path": {"prefix": "/api"}}])(Req(path="/ap"))
    assert compiled([{"path": {"regex": "/r/[0-9]+"}}])(Req(path="/r/42"))
    assert not compiled([{"path": {"regex": "/r/[0-9]+"}}])(Req(path="/r/42/x"))


def test_and_within_block_or_across_blocks() -> None:
    """All conditions of a block must hold; any block holding is enough."""
    match = compiled(
        [
            {
                "path": {"prefix": "/reviews"},
                "methods": ["GET"],
                "headers": {"end-user": {"exact": "jason"}},
            },
            {"method": "POST"},
        ]
    )
    assert match(Req("GET", "/reviews/1", header_map={"end-user": "jason"}))
    assert not match(Req("GET", "/reviews/1", header_map={"end-user": "bob"}))
    assert not match(Req("PUT", "/reviews/1", header_map={"end-user": "jason"}))
    assert match(Req("POST", "/anything"))


def test_header_matchers_including_presence() -> None:
    """Header names are matched in lower case; present true/false tests existence."""
    match = compiled([{"headers": {"X-Canary": {"present": True}, "x-debug": {"present": False}}}])
    assert match(Req(header_map={"x-canary": ""}))
    assert not match(Req(header_map={"x-canary": "1", "x-debug": "1"}))
    assert not match(Req())
    prefix = compiled([{"headers": {"user-agent": {"prefix": "curl/"}}}])
    assert prefix(Req(header_map={"user-agent": "curl/8.0"}))
    assert not prefix(Req())


def test_query_matchers_and_lazy_parsing() -> None:
    """Query params match decoded values; the query is read only when a block reaches it."""
    match = compiled(
        [
            {"path": {"exact": "/a"}, "query": {"v": {"exact": "a b"}, "flag": {"present": True}}},
            {"path": {"exact": "/b"}, "query": {"v": {"regex": "[0-9]+"}}},
        ]
    )
    assert match(Req(path="/a", raw_query="v=a+b&flag"))
    assert not match(Req(path="/a", raw_query="v=a+b"))
    assert match(Req(path="/b", raw_query="v=12&v=x"))  # first value wins
    untouched = Req(path="/c", raw_query="v=1")
    assert not match(untouched)
    assert untouched.query_reads == 0
    both = compiled([{"query": {"v": {"exact": "1"}}}, {"query": {"v": {"exact": "2"}}}])
    twice = Req(raw_query="v=3")  # both blocks reach their query conditions and fail
    assert not both(twice)
    assert twice.query_reads == 1


def test_parse_query_keeps_first_value_and_blank_flags() -> None:
    """A repeated parameter keeps its first value and a bare name maps to ''."""
    assert parse_query("a=1&a=2&b&c=%2F") == {"a": "1", "b": "", "c": "/"}


def test_regex_without_precompiled_pattern() -> None:
    """A hand-built StringMatch without ``pattern`` is compiled from its value."""
    match = compile_matches((Match(path=StringMatch("regex", "/x.*")),))
    assert match(Req(path="/xyz"))


texts = st.text(alphabet="ab/", max_size=4)
matchers = st.one_of(
    st.builds(StringMatch, st.sampled_from(["exact", "prefix"]), texts),
    st.builds(
        lambda v: StringMatch("regex", v, pattern=re.compile(v)),
        st.sampled_from(["a.*", "/b?", ".*b"]),
    ),
    st.builds(lambda p: StringMatch("present", present=p), st.booleans()),
)
path_matchers = st.one_of(
    st.none(),
    st.builds(StringMatch, st.sampled_from(["exact", "prefix"]), texts),
    st.builds(
        lambda v: StringMatch("regex", v, pattern=re.compile(v)), st.sampled_from(["/a.*", "/b?"])
    ),
)
names = st.sampled_from(["x", "y"])
blocks = st.builds(
    Match,
    path_matchers,
    st.lists(st.sampled_from(["GET", "POST"]), max_size=2, unique=True).map(tuple),
    st.dictionaries(names, matchers, max_size=2).map(lambda d: tuple(d.items())),
    st.dictionaries(names, matchers, max_size=2).map(lambda d: tuple(d.items())),
)
requests = st.tuples(
    st.sampled_from(["GET", "POST", "PUT"]),
    texts,
    st.dictionaries(names, texts, max_size=2),
    st.dictionaries(names, texts, max_size=2),
)


@given(match_blocks=st.lists(blocks, max_size=3), request=requests)
def test_compiled_agrees_with_the_reference_semantics(
    match_blocks: list[Match], request: tuple[str, str, dict[str, str], dict[str, str]]
) -> None:
    """The compiled predicate equals 'no blocks, or any Match.matches' from meshctl.api.rules."""
    method, path, headers, query = request
    req = Req(method, path, urlencode(query), headers)
    expected = not match_blocks or any(
        b.matches(method, path, headers, query) for b in match_blocks
    )
    assert compile_matches(match_blocks)(req) == expected


@given(prefix=texts, path=texts)
def test_prefix_is_startswith(prefix: str, path: str) -> None:
    """A path prefix block matches exactly the paths that start with the prefix."""
    match = compile_matches((Match(path=StringMatch("prefix", prefix)),))
    assert match(Req(path=path)) == path.startswith(prefix)

"""Route-rule policies compiled once per snapshot: rate limits, faults, retries, mirroring,
header edits, rewrites, redirects and direct responses.

Each object is attached to a `Decision` only when its rule declares it, so an unconfigured
policy costs nothing per request (the exchange tests one attribute for None).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Hashable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from meshctl.api.rules import GRPC_RETRY_ON
from proxy.clientaddress import trusted_client
from proxy.policy.backoff import Backoff
from proxy.policy.token_bucket import KeyedTokenBuckets, TokenBucket

if TYPE_CHECKING:
    from meshctl.api.matches import Match
    from meshctl.api.policy import RateLimit
    from meshctl.api.rules import (
        Cors,
        DirectResponse,
        Fault,
        HeaderEdits,
        Redirect,
        Retries,
        Rewrite,
    )
    from proxy.destinations import DestinationState
    from proxy.exchange import Exchange
    from proxy.metrics import RequestStats
    from proxy.routing import Backend

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class FaultPolicy:
    """Delay and/or abort a share of the requests that match the rule; an abort with a gRPC
    status (``abort_grpc``) answers a gRPC call with it, other requests with
    ``abort_status`` (its HTTP status)."""

    __slots__ = ("abort_grpc", "abort_percent", "abort_status", "delay", "delay_percent", "rng")

    def __init__(self, fault: Fault, rng: random.Random) -> None:
        self.rng = rng
        self.delay = fault.delay.fixed_delay if fault.delay else 0.0
        self.delay_percent = fault.delay.percent if fault.delay else 0.0
        self.abort_status = fault.abort.http_status if fault.abort else 0
        self.abort_percent = fault.abort.percent if fault.abort else 0.0
        self.abort_grpc = fault.abort.grpc_status if fault.abort else None

    def roll_delay(self) -> float:
        if self.delay and self.rng.random() * 100.0 < self.delay_percent:
            return self.delay
        return 0.0

    def roll_abort(self) -> int:
        if self.abort_status and self.rng.random() * 100.0 < self.abort_percent:
            return self.abort_status
        return 0


class RetryPolicy:
    """When and how often to retry a failed attempt, within the destination's budget."""

    __slots__ = ("allow_non_idempotent", "attempts", "backoff", "codes", "grpc_codes", "on_5xx",
                 "on_connect_failure", "on_gateway", "on_reset", "per_try_timeout", "state")

    def __init__(self, retries: Retries, state: DestinationState, rng: random.Random) -> None:
        self.attempts = retries.attempts
        self.per_try_timeout = retries.per_try_timeout
        on = set(retries.retry_on)
        self.on_5xx = "5xx" in on
        self.on_gateway = "gateway-error" in on
        self.on_reset = "reset" in on
        self.on_connect_failure = "connect-failure" in on
        self.codes = frozenset(retries.retriable_status_codes)
        # grpc-status values (as sent, text) that a trailers-only answer is retried on
        self.grpc_codes = frozenset(str(GRPC_RETRY_ON[name]) for name in on
                                    if name in GRPC_RETRY_ON)
        self.backoff = Backoff(retries.backoff.base_interval, retries.backoff.max_interval, rng)
        self.allow_non_idempotent = retries.allow_non_idempotent
        self.state = state

    def retriable_status(self, status: int) -> bool:
        if status in self.codes:
            return True
        if status >= 500 and self.on_5xx:
            return True
        return status in (502, 503, 504) and self.on_gateway

    def retriable_failure(self, kind: str) -> bool:
        """kind: connect-failure | reset | timeout (a per-try timeout)."""
        if kind == "connect-failure":
            return self.on_connect_failure or self.on_5xx or self.on_gateway
        if kind == "reset":
            return self.on_reset or self.on_5xx
        return self.on_5xx or self.on_gateway or self.on_reset  # per-try timeout, as Envoy


class MirrorPolicy:
    """Copy a share of requests to another backend; the copy's outcome is ignored."""

    __slots__ = ("backend", "percent", "rng")

    def __init__(self, backend: Backend, percent: float, rng: random.Random) -> None:
        self.backend = backend
        self.percent = percent
        self.rng = rng

    def roll(self) -> bool:
        return self.rng.random() * 100.0 < self.percent


# Request header lines the proxy adds itself (proxy.requesthead's head tail) that a rule's
# `set` or `remove` replaces or removes, as Envoy's route edits come after its own: without
# this, `remove: [x-forwarded-for]` left the header as it was and `set` sent a second one.
# XFCC (an identity, the inbound sidecar's to judge) and framing stay the proxy's.
_TAIL_EDITABLE = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-request-id"})


class HeaderEditor:
    """Set / add / remove headers on a list of (name, value) pairs or serialized lines."""

    __slots__ = ("add", "remove", "set", "tail_remove")

    def __init__(self, edits: HeaderEdits) -> None:
        # Values stripped: HTTP/2 forbids surrounding whitespace (RFC 9113 8.2.1) and the h2
        # connections send header blocks unnormalised (proxy.h2guard.configuration).
        self.set = tuple((k.encode("latin-1"), v.strip(" \t").encode("latin-1"))
                         for k, v in edits.set)
        self.add = tuple((k.encode("latin-1"), v.strip(" \t").encode("latin-1"))
                         for k, v in edits.add)
        self.remove = frozenset(k.lower().encode("latin-1") for k in edits.remove) | frozenset(
            k.lower() for k, _ in self.set)
        self.tail_remove = self.remove & _TAIL_EDITABLE

    @classmethod
    def build(cls, edits: HeaderEdits) -> HeaderEditor | None:
        if not (edits.set or edits.add or edits.remove):
            return None
        return cls(edits)

    def edit_pairs(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        # (the fields kept as they are: a never-indexed one stays so on HTTP/2)
        out = [h for h in headers if h[0].lower() not in self.remove] if self.remove \
            else list(headers)
        out.extend(self.set)
        out.extend(self.add)
        return out

    def edit_tail(self, lines: list[bytes]) -> list[bytes]:
        """A request's head tail (`name: value\\r\\n` lines the proxy adds) without the
        forwarding lines the rule sets or removes (its `set` values are in ``edit_pairs``)."""
        drop = self.tail_remove
        if not drop:
            return lines
        return [line for line in lines if line.split(b":", 1)[0].lower() not in drop]

    def apply(self, lines: list[bytes]) -> list[bytes]:
        """Edit serialized response header lines (`name: value\\r\\n`); the status line stays."""
        out = [lines[0]]
        for line in lines[1:]:
            if line.split(b":", 1)[0].strip().lower() not in self.remove:
                out.append(line)
        out.extend(n + b": " + v + b"\r\n" for n, v in (*self.set, *self.add))
        return out


def retry_after_header(seconds: float) -> tuple[tuple[bytes, bytes], ...]:
    return ((b"retry-after", str(max(1, math.ceil(seconds))).encode()),)


Limiter = tuple[TokenBucket | None, KeyedTokenBuckets | None]


class RuleLimits:
    """The buckets of route rules' rate limits, by rule identity, kept across config pushes.

    A proxy keeps one of these per applied snapshot; the next is made with ``previous`` = the
    one in force, and a rule whose identity (``key``: the router, the Route, the rule's name
    or else its index and match blocks, the host) and limit are unchanged gets its buckets back, as
    DestinationPolicy.rateLimit's (proxy.inbound): a push neither refills a drained bucket nor
    forgets the per-source ones. A changed limit, or a rule not seen in the snapshot before,
    starts full buckets; those of rules gone are dropped with the old snapshot (``settle``).
    """

    __slots__ = ("_current", "_previous", "clock", "stats")

    def __init__(self, stats: RequestStats, previous: RuleLimits | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.clock = clock
        self._current: dict[Hashable, tuple[RateLimit, Limiter]] = {}
        self._previous = previous._current if previous is not None else {}

    def __len__(self) -> int:
        return len(self._current)

    def limiter(self, key: Hashable, limit: RateLimit) -> Limiter:
        """The buckets of the rule ``key`` limited by ``limit`` (the same for every listener
        and port of this snapshot that compiles it)."""
        found = self._current.get(key)
        if found is None or found[0] != limit:
            found = self._previous.get(key)
            if found is None or found[0] != limit:
                rate, burst = limit.requests_per_second, limit.burst
                found = (limit, (None, KeyedTokenBuckets(rate, burst, self.clock))
                         if limit.per_source else (TokenBucket(rate, burst, self.clock), None))
            self._current[key] = found
        return found[1]

    def settle(self) -> None:
        """This snapshot is in force: the previous one's buckets are no longer asked for."""
        self._previous = {}


class RateLimitPolicy:
    """A route rule's rate limit, in the proxy applying the rule: one bucket for every
    request the rule matches, or one per caller (its mTLS identity, else its IP address, as
    the destination's limit keys them). A request without a token is answered 429
    `rate_limited` with `retry-after`; one with a token goes on to the rule's next step (a
    rewrite), if any. The rule's CORS step runs before it (a preflight spends no token)."""

    __slots__ = ("bucket", "keyed", "labels", "stats", "then")

    def __init__(self, limiter: Limiter, stats: RequestStats, service: str,
                 then: Callable[[Exchange], Any] | None) -> None:
        self.bucket, self.keyed = limiter
        self.stats = stats
        # ami_rate_limited_total's label, as the destination's own limit counts it
        self.labels = (("destination_service", service),)
        self.then = then

    def __call__(self, ex: Exchange) -> Any:
        bucket = self.bucket
        if bucket is not None:
            if not bucket.try_acquire():
                return self._limited(bucket.retry_after())
        else:
            keyed = self.keyed
            assert keyed is not None
            conn = ex.downstream
            hops = conn.listener.trusted_proxies
            key = conn.peer_identity or (trusted_client(ex, hops) if hops else conn.client_ip)
            if not keyed.try_acquire(key):
                return self._limited(keyed.retry_after(key))
        then = self.then
        return then(ex) if then is not None else None

    def _limited(self, wait: float) -> tuple[str, None, tuple[tuple[bytes, bytes], ...]]:
        self.stats.inc("ami_rate_limited", self.labels)
        return ("rate_limited", None, retry_after_header(wait))


class RewritePolicy:
    """The path sent upstream: ``uri`` in place of the path prefix that matched.

    Run before dispatch (the decision's ``admit`` step, always letting the request through), so
    retries and mirrors send the rewritten target. The prefix is the one of the match block the
    request matched (the first that holds, as the router tries them): when that block matched
    on an exact path, a regex or no path, the whole path is replaced, as Istio's HTTPRewrite.
    The query is kept. A prefix replaced by a ``uri`` ending in '/' does not leave a double
    slash (`/api` + `/x` under `uri: /` is `/x`).
    """

    __slots__ = ("blocks", "uri")

    def __init__(self, uri: str, matches: tuple[Match, ...]) -> None:
        from proxy.policy.matching import compile_matches

        self.uri = uri
        # Per block: its own predicate (None when it is the only block, so it is the one that
        # matched), the prefix it matched on (None: exact, regex or no path condition) and
        # whether it did regardless of case (ignoreUriCase: the prefix in lower case).
        # (The router calls its compiled matchers with the exchange the same way.)
        self.blocks: tuple[tuple[Callable[[Any], bool] | None, str | None, bool], ...] = tuple(
            (compile_matches((m,)) if len(matches) > 1 else None,
             (m.path.value.lower() if m.ignore_uri_case else m.path.value)
             if m.path is not None and m.path.kind == "prefix" else None,
             m.ignore_uri_case)
            for m in matches)

    def __call__(self, ex: Exchange) -> None:
        path, uri = ex.path, self.uri
        prefix = None
        folded = False
        for check, block_prefix, fold in self.blocks:
            if check is None or check(ex):
                prefix, folded = block_prefix, fold
                break
        if prefix is not None and (path.lower() if folded else path).startswith(prefix):
            rest = path[len(prefix):]
            path = uri + rest[1:] if uri.endswith("/") and rest.startswith("/") else uri + rest
        else:
            path = uri
        ex.target = (f"{path}?{ex.query}" if ex.query else path).encode("latin-1")


class RedirectPolicy:
    """Answers with a redirect: the request's own URL with the rule's parts put in."""

    __slots__ = ("authority", "code", "port", "scheme", "uri")

    def __init__(self, redirect: Redirect) -> None:
        self.uri = redirect.uri
        self.authority = redirect.authority
        self.scheme = redirect.scheme
        self.port = redirect.port
        self.code = redirect.code

    def __call__(self, ex: Exchange) -> tuple[str, int, tuple[tuple[bytes, bytes], ...]]:
        scheme = ex.downstream.listener.scheme
        host = self.authority or ex.authority
        if self.port is not None:
            host = f"{_without_port(host)}:{self.port}"
        elif self.scheme is not None and self.scheme != scheme and self.authority is None:
            # The port the request came to means nothing to the new scheme (a port written
            # in the rule's own authority is meant for it, and stays).
            host = _without_port(host)
        scheme = self.scheme or scheme
        bare = _without_port(host)
        if host[len(bare):] == (":443" if scheme == "https" else ":80"):
            host = bare  # the scheme's own port is not written (the Gateway API's)
        path = self.uri or ex.path
        location = f"{scheme}://{host}{path}" + (f"?{ex.query}" if ex.query else "")
        return "redirect", self.code, ((b"location", location.encode("latin-1")),)


class DirectResponsePolicy:
    """Answers with the rule's status and body (`direct_response`), as Envoy's
    direct_response: text/plain unless the rule's response edits set a content-type."""

    __slots__ = ("answer",)

    def __init__(self, direct: DirectResponse) -> None:
        self.answer = ("direct_response", direct.status, (), direct.body)

    def __call__(self, ex: Exchange) -> tuple[str, int, tuple[()], bytes]:
        return self.answer


class CorsPolicy:
    """Cross-origin requests from browsers, as Envoy's CORS filter: a preflight from an allowed
    origin is answered here (`cors_preflight`, 200, never forwarded); a request from an
    allowed origin gets the allow headers on its response. Other origins pass through as if
    there were no policy, so the browser refuses them. Runs before the rule's other
    pre-dispatch steps (its rate limit, a rewrite), which it then calls.
    """

    __slots__ = ("credentials", "expose", "headers", "max_age", "methods", "origins", "static",
                 "then", "wildcard")

    def __init__(self, cors: Cors, then: Callable[[Exchange], Any] | None) -> None:
        self.origins = cors.allow_origins
        self.wildcard = any(o.kind == "exact" and o.value == "*" for o in self.origins)
        self.methods = ", ".join(cors.allow_methods).encode()
        self.headers = ", ".join(cors.allow_headers).encode()
        self.expose = ", ".join(cors.expose_headers).encode()
        self.max_age = str(int(cors.max_age)).encode() if cors.max_age is not None else b""
        self.credentials = cors.allow_credentials
        # Every origin gets the same answer (`*`): responses do not vary by Origin.
        self.static = self.wildcard and not self.credentials
        self.then = then

    def __call__(self, ex: Exchange) -> Any:
        origin = ex.header("origin")
        if origin is not None and (self.wildcard or any(o.matches(origin)
                                                        for o in self.origins)):
            allow = self._allow_lines(origin)
            if ex.method == b"OPTIONS" and ex.header("access-control-request-method"):
                extra = [*allow]
                for name, value in ((b"access-control-allow-methods", self.methods),
                                    (b"access-control-allow-headers", self.headers),
                                    (b"access-control-max-age", self.max_age)):
                    if value:
                        extra.append((name, value))
                return "cors_preflight", 200, tuple(extra)
            if self.expose:
                allow.append((b"access-control-expose-headers", self.expose))
            decision = ex.decision
            ex.response_edits = _CorsHeaders(
                decision.response_header_ops if decision is not None else None, allow)
        elif not self.static:
            # No allow headers for this request, yet its answer depends on Origin: a cache
            # must not give it to a browser from an allowed origin (Fetch, CORS and caches).
            decision = ex.decision
            ex.response_edits = _VaryOrigin(
                decision.response_header_ops if decision is not None else None)
        return self.then(ex) if self.then is not None else None

    def _allow_lines(self, origin: str) -> list[tuple[bytes, bytes]]:
        # A wildcard without credentials answers "*"; otherwise the origin itself, which makes
        # the answer depend on Origin: caches must keep one per origin (Vary).
        value = b"*" if self.wildcard and not self.credentials else origin.encode("latin-1")
        lines = [(b"access-control-allow-origin", value), (b"vary", b"origin")]
        if self.credentials:
            lines.append((b"access-control-allow-credentials", b"true"))
        return lines


_CORS_RESPONSE_HEADERS = frozenset({b"access-control-allow-origin",
                                    b"access-control-allow-credentials",
                                    b"access-control-expose-headers"})


class _CorsHeaders:
    """One response's header edits: the rule's own, then the CORS answer (replacing any the
    upstream sent)."""

    __slots__ = ("base", "lines")

    def __init__(self, base: HeaderEditor | None, lines: list[tuple[bytes, bytes]]) -> None:
        self.base = base
        self.lines = lines  # (a local reply, a timeout or an overflow, gets them too)

    def apply(self, lines: list[bytes]) -> list[bytes]:
        out = self.base.apply(lines) if self.base is not None else lines
        out = [out[0], *(line for line in out[1:]
                         if line.split(b":", 1)[0].strip().lower() not in _CORS_RESPONSE_HEADERS)]
        out.extend(n + b": " + v + b"\r\n" for n, v in self.lines)
        return out

    def edit_pairs(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The same on (name, value) pairs (an HTTP/2 response)."""
        out = self.base.edit_pairs(headers) if self.base is not None else headers
        out = [h for h in out if h[0].lower() not in _CORS_RESPONSE_HEADERS]
        out.extend(self.lines)
        return out


class _VaryOrigin:
    """One response's header edits: the rule's own, then `vary: origin` (a CORS rule's answer
    to a request it gave no allow headers)."""

    __slots__ = ("base",)

    def __init__(self, base: HeaderEditor | None) -> None:
        self.base = base

    def apply(self, lines: list[bytes]) -> list[bytes]:
        out = self.base.apply(lines) if self.base is not None else list(lines)
        out.append(b"vary: origin\r\n")
        return out

    def edit_pairs(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The same on (name, value) pairs (an HTTP/2 response)."""
        out = self.base.edit_pairs(headers) if self.base is not None else list(headers)
        out.append((b"vary", b"origin"))
        return out


def _without_port(authority: str) -> str:
    if authority.startswith("["):  # IPv6 literal
        return authority.split("]", 1)[0] + "]"
    return authority.rsplit(":", 1)[0] if ":" in authority else authority


def attach(decision: Any, rule: Any, state: DestinationState | None, rng: random.Random,
           mirror_backend: Backend | None, matches: tuple[Match, ...] | None = None,
           rate_limit: Callable[[Callable[[Exchange], Any] | None], Any] | None = None
           ) -> None:
    """Compile the declared policies of `rule` onto `decision`; ``matches``: the rule's match
    blocks this proxy applies (default: all of them); ``rate_limit``: makes the rule's
    RateLimitPolicy around its next admission step (None: the rule's limit is not enforced
    here)."""
    decision.timeout = rule.timeout
    if rule.redirect is not None:
        decision.admit = RedirectPolicy(rule.redirect)
        return  # a redirect rule has nothing else (validation makes sure)
    if rule.fault is not None:
        decision.fault = FaultPolicy(rule.fault, rng)
    if rule.retries is not None and rule.retries.attempts > 0 and state is not None:
        decision.retry = RetryPolicy(rule.retries, state, rng)
    if rule.mirror is not None and mirror_backend is not None:
        decision.mirror = MirrorPolicy(mirror_backend, rule.mirror.percent, rng)
    request_edits = rule.headers.request
    rewrite: Rewrite | None = rule.rewrite
    if rewrite is not None:
        if rewrite.uri is not None:
            decision.admit = RewritePolicy(
                rewrite.uri, rule.matches if matches is None else matches)
        if rewrite.authority is not None:  # the Host header, set like any header edit
            request_edits = replace(request_edits,
                                    set=(*request_edits.set, ("host", rewrite.authority)))
    if rule.direct_response is not None:  # (nothing else forwards: validation)
        decision.admit = DirectResponsePolicy(rule.direct_response)
    if rule.rate_limit is not None and rate_limit is not None:
        # before the rewrite (a limited request gets none), after CORS: a preflight is
        # answered without spending a token (a browser's POST would otherwise pay two), and
        # a 429 carries the allow headers, so the page can read it and its retry-after, as
        # with Envoy's CORS filter ahead of local_ratelimit (the gateway's authorization,
        # wrapped around this later, runs first)
        decision.admit = rate_limit(decision.admit)
    if rule.cors is not None:
        decision.admit = CorsPolicy(rule.cors, decision.admit)
    decision.request_headers = HeaderEditor.build(request_edits)
    decision.response_header_ops = HeaderEditor.build(rule.headers.response)

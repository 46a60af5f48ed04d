"""AuthorizationPolicy CUSTOM: the external authorization check that a selected request
waits for before the rest of its admission; here the step and an HTTP provider's check
(Envoy's ext_authz HTTP service), a gRPC provider's in `proxy.grpcauthz`.

The check is an admission step (``ExtAuthzCheck``, built at config-apply time only for a
workload with a CUSTOM policy): it answers ``CHECKING`` and asks the provider in a task; the
request's body waits meanwhile as it does during a fault delay (held, the client paused past
64 KiB). The answer resumes the admission (``proxy.exchangepolicy.resume``), which runs the
whole admission chain again, this step passing, or refuses the request. The provider is
reached through this proxy's own endpoint pools: a mesh service with mTLS, as any outbound
call, an ExternalService host as egress.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence, Set
from typing import TYPE_CHECKING, Any

from proxy.clientaddress import trusted_client
from proxy.inbound import JWT_REFUSED
from proxy.jwtauth import InvalidToken
from proxy.proxyread import direct_peer

if TYPE_CHECKING:
    from meshctl.api.authz import AuthorizationRule
    from meshctl.api.extauthz import ExtAuthzGrpc, ExtAuthzHttp, HeaderPatterns
    from proxy.exchange import Exchange
    from proxy.inbound import InboundPolicy
    from proxy.jwtauth import Authenticated
    from proxy.layers import HeaderEditor
    from proxy.metrics import RequestStats
    from proxy.pools import EndpointPool
    from proxy.routing import Backend, RouterBuilder
    from proxy.upstream import UpstreamConnection

log = logging.getLogger("ami.proxy.extauthz")

# What the step answers while the check is in flight: the admission resumes later.
CHECKING = ("ext_authz_checking", None, ())
MAX_ANSWER = 64 * 1024  # an authorization answer's body; a larger one is an error
# Never copied into the check, whatever includeRequestHeadersInCheck says: hop-by-hop, the
# request's framing (the check has no body), and what the proxy writes itself.
_NOT_SENT = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"upgrade",
                       b"transfer-encoding", b"content-length", b"expect", b"host",
                       b"x-ami-peer", b"trailer", b"http2-settings"})
_ALWAYS = frozenset({"authorization"})  # Envoy's: with the method, path, host, length
# The answer's headers a denial never passes on (its framing and the hop-by-hop ones).
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive",
                      b"host", b"x-ami-reason"})
_ON_DENY_ALWAYS = frozenset({"www-authenticate", "location"})  # with a headersToDownstreamOnDeny


class CheckFailed(Exception):
    """The provider gave no usable answer (no endpoint, a reset, a malformed answer)."""


class _Unanswered(CheckFailed):
    """The connection ended before any byte of the answer (a kept-alive one the provider
    closed meanwhile: the check, which has no body, may be sent again)."""


class Answer:
    """The provider's answer: status, headers as (lower-case name, value), body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class ExtAuthzCheck:
    """The admission step of a workload with a CUSTOM policy: the request's JWT verified
    first (``InboundPolicy.authenticate``); a request the rules select then waits for the
    provider's answer; then (or for any other request at once) the rest of the workload's
    admission (``InboundPolicy.authorize``: DENY, ALLOW, rate limit). What is shared by
    the provider's kinds: the selection, the wait, and what an answer does (``_failed``,
    ``_denied``, ``_allowed``); a kind asks (``_ask``) and reads its answer (``_decide``)."""

    def __init__(self, policy: InboundPolicy, provider: str,
                 spec: ExtAuthzHttp | ExtAuthzGrpc, rules: Sequence[AuthorizationRule],
                 backend: Backend | None, stats: RequestStats,
                 labels: tuple[tuple[str, str], ...], port: int,
                 proxy_protocol: bool = False) -> None:
        self.policy = policy  # its JWT verification comes first, its DENY and ALLOW after
        self.provider = provider
        self.spec = spec
        self.rules = tuple(rules)
        self.backend = backend  # None: the provider's service is unknown to this proxy
        self.stats = stats
        self.labels = labels
        self.port = port
        self.reads_remote = any(r.reads_remote for r in self.rules)
        # behind a PROXY protocol balancer (--proxy-protocol), `ipBlocks` judge the
        # connection's own peer, as the workload's ALLOW and DENY rules do (InboundPolicy)
        self.reads_direct = proxy_protocol and any(r.reads_direct for r in self.rules)

    def __call__(self, ex: Exchange) -> Any:
        policy = self.policy
        resumed = getattr(ex, "ext_authz", None)
        if resumed is not None:  # the provider allowed it: the rest of the admission
            return policy.authorize(ex, resumed[1])
        # The JWT is verified first, as Envoy's jwt_authn filter runs before ext_authz: a bad
        # token is refused without asking, and CUSTOM rules may read the principal and claims.
        found = None
        if policy.authn is not None:
            try:
                found = policy.authenticate(ex)
            except InvalidToken:
                return JWT_REFUSED
        if not self.selects(ex, found):
            return policy.authorize(ex, found)
        ex.ext_authz = (self.provider, found)
        # Held where a connect task is: an abort (the client gone) cancels it (drop_attempt).
        ex._connect_task = ex.downstream.loop.create_task(self._check(ex))
        return CHECKING

    def selects(self, ex: Exchange, found: Authenticated | None = None) -> bool:
        """Whether a CUSTOM rule matches ``ex``: read as a DENY rule's, so that an ambiguous
        request (a header sent twice, an unknown peer) is checked rather than let through."""
        from proxy.inbound import _header_values

        conn = ex.downstream
        remote = None
        if self.reads_remote and conn.listener.trusted_proxies:
            remote = trusted_client(ex, conn.listener.trusted_proxies).decode("latin-1")
        method = ex.method.decode("latin-1")
        headers = _header_values(ex)
        address = conn.client_ip.decode("latin-1")
        if self.reads_direct:
            remote = remote or address
            address = direct_peer(conn)
        principal, claims = found if found is not None else (None, None)
        return any(r.matches(conn.peer_identity, conn.peer_service, conn.peer_namespace,
                             method, ex.path, headers, True, principal, claims, self.port,
                             ex.authority, address, remote) for r in self.rules)

    # --- the check --------------------------------------------------------------------------
    async def _check(self, ex: Exchange) -> None:
        answer: Any = None
        try:
            answer = await asyncio.wait_for(self._ask(ex), self.spec.timeout)
        except asyncio.CancelledError:
            raise  # the client went away: nothing to answer
        except (TimeoutError, OSError, CheckFailed) as err:
            log.info("ext_authz provider %s: %s", self.provider,
                     "timed out" if isinstance(err, TimeoutError) else err or type(err).__name__)
        except Exception:
            log.exception("ext_authz check to provider %s failed", self.provider)
        ex._connect_task = None
        if ex.status or ex.downstream.closed:
            return  # answered meanwhile (a stream idle timeout...) or gone
        try:
            self._decide(ex, answer)
        except Exception:
            ex.internal_error()

    async def _ask(self, ex: Exchange) -> Any:
        """The provider's answer (read by ``_decide``); raises CheckFailed or OSError."""
        raise NotImplementedError

    def _decide(self, ex: Exchange, answer: Any) -> None:
        """Act on ``answer`` (None: no usable one) with ``_failed``, ``_denied``, ``_allowed``."""
        raise NotImplementedError

    # --- what an answer does, whichever the provider's kind ---------------------------------
    def _failed(self, ex: Exchange, status: int = 0,
                headers: tuple[tuple[bytes, bytes], ...] = (), body: bytes | None = None
                ) -> None:
        """No usable answer: statusOnError (`ext_authz_error`), or through with failOpen. A
        gRPC provider's error_response gives the refusal its own status, headers and body."""
        from proxy import exchangepolicy

        self._count("error")
        if self.spec.fail_open:
            exchangepolicy.resume(ex)
        else:
            self._refuse(ex, "ext_authz_error", status or self.spec.status_on_error, headers,
                         body)

    def _denied(self, ex: Exchange, status: int, headers: tuple[tuple[bytes, bytes], ...],
                body: bytes) -> None:
        self._count("denied")
        self._refuse(ex, "ext_authz_denied", status, headers, body)

    def _allowed(self, ex: Exchange, upstream: list[tuple[bytes, bytes]],
                 append: Sequence[tuple[bytes, bytes]] = (), remove: Set[bytes] = frozenset(),
                 downstream: list[tuple[bytes, bytes]] | None = None,
                 downstream_added: Sequence[tuple[bytes, bytes]] = ()) -> None:
        """Through: ``upstream`` headers set on the request (replacing any of their names),
        ``append`` ones appended to what is there (``appended``), ``remove`` names (lower
        case) dropped; with clearRouteCache, routed again; ``downstream`` headers set on the
        response, ``downstream_added`` ones added to it beside the app's; then the rest of
        the admission."""
        from proxy import exchangepolicy

        self._count("allowed")
        if upstream or remove:  # an existing header of the name is replaced, in each
            # spelling an app reads as it (`x_user` is HTTP_X_USER, as `x-user`)
            names = {n.replace(b"_", b"-") for n, _ in upstream} | {
                n.replace(b"_", b"-") for n in remove}
            ex.headers = [h for h in ex.headers
                          if h[0].lower().replace(b"_", b"-") not in names] + upstream
        if append:
            ex.headers = appended(ex.headers, append)
        if self.spec.clear_route_cache and (upstream or append or remove) \
                and not self._reroute(ex):
            return
        if downstream or downstream_added:
            ex.response_edits = ResponseHeaders(ex.response_edits, downstream or [],
                                                downstream_added)
        exchangepolicy.resume(ex)

    def _reroute(self, ex: Exchange) -> bool:
        """clearRouteCache: the request's route chosen again, with the provider's header
        edits (Envoy's route cache cleared); False when it answered (no route now)."""
        decision = ex.downstream.listener.router.route(ex)
        if isinstance(decision, str):
            ex.reply(decision)
            return False
        if decision is not ex.decision:
            ex.decision = decision
            ex.response_edits = decision.response_header_ops
        return True

    def _refuse(self, ex: Exchange, reason: str, status: int,
                headers: tuple[tuple[bytes, bytes], ...], body: bytes | None) -> None:
        decision = ex.decision
        ex.backend = decision.backends[0] if decision is not None and decision.backends \
            else None
        if headers:  # as edits, so that the provider's content-type replaces the reply's
            ex.response_edits = ResponseHeaders(ex.response_edits, list(headers))
        ex.reply(reason, status=status, body=body)

    def _count(self, result: str) -> None:
        self.stats.inc("ami_ext_authz_checks", (*self.labels, ("result", result)))


class HttpCheck(ExtAuthzCheck):
    """An envoyExtAuthzHttp provider's check: the request's head (no body) in HTTP/1.1;
    200 allows, a 5xx or no answer is an error, any other status denies with it."""

    spec: ExtAuthzHttp

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        extra = tuple((k.encode("latin-1"), v.encode("latin-1"))
                      for k, v in self.spec.include_additional_headers)
        self._extra = extra
        self._extra_names = frozenset(k for k, _ in extra)

    def _decide(self, ex: Exchange, answer: Answer | None) -> None:
        spec = self.spec
        if answer is None or answer.status >= 500:  # (a 5xx is an error too, as Envoy's)
            self._failed(ex)
        elif answer.status != 200:
            keep = spec.headers_to_downstream_on_deny
            headers = tuple((n, v) for n, v in answer.headers if n not in _FRAMING and (
                not keep or _named(keep, n) or n.decode("latin-1") in _ON_DENY_ALWAYS))
            self._denied(ex, answer.status, headers, answer.body)
        else:
            self._allowed(
                ex, [(n, v) for n, v in answer.headers
                     if _named(spec.headers_to_upstream_on_allow, n)],
                downstream=[(n, v) for n, v in answer.headers
                            if _named(spec.headers_to_downstream_on_allow, n)])

    async def _ask(self, ex: Exchange) -> Answer:
        backend = self.backend
        pool = backend.pick_endpoint() if backend is not None else None
        if pool is None:
            raise CheckFailed(f"no endpoint of {self.spec.service}")
        head = self._head(ex, pool)
        conn = pool.take_idle()
        if conn is not None:
            try:
                return await self._send(ex, pool, conn, head)
            except _Unanswered:
                pass  # closed by the provider as it was reused: once more, on a new one
        return await self._send(ex, pool, await pool.connect(), head)

    async def _send(self, ex: Exchange, pool: EndpointPool, conn: UpstreamConnection,
                    head: bytes) -> Answer:
        call = _Call(pool, asyncio.get_running_loop().create_future(), ex.method == b"HEAD")
        call._conn = conn
        try:
            conn.send(call, head)
            return await call.answer
        finally:
            call.drop()

    def _head(self, ex: Exchange, pool: EndpointPool) -> bytes:
        """The check request: the method, pathPrefix + the path (and query) and the allowed
        headers of the original (those the proxy adds to it included), and no body (as
        Envoy's HTTP ext_authz client)."""
        spec = self.spec
        target = ex.target if ex.target.startswith(b"/") else ex.path.encode("latin-1")
        parts = [ex.method, b" ", spec.path_prefix.encode("latin-1"), target,
                 b" HTTP/1.1\r\nhost: ", ex.authority.encode("latin-1"),
                 b"\r\ncontent-length: 0\r\n"]
        wanted = spec.include_request_headers
        for name, value in ex.headers:
            low = name.lower()
            if low in _NOT_SENT or low in self._extra_names:
                continue
            text = low.decode("latin-1")
            if text in _ALWAYS or (wanted and text in wanted):
                parts.extend((name, b": ", value, b"\r\n"))
        if wanted:  # what the proxy writes itself (x-forwarded-for and -proto, x-request-id,
            # XFCC), as Envoy's connection manager does before its filters: as the app gets it
            for lines in ex.head_tail:
                for line in lines.split(b"\r\n"):
                    name, colon, value = line.partition(b":")
                    low = name.strip().lower()
                    if (colon and low not in _NOT_SENT and low not in self._extra_names
                            and low.decode("latin-1") in wanted):
                        parts.extend((low, b": ", value.strip(), b"\r\n"))
        for name, value in self._extra:
            parts.extend((name, b": ", value, b"\r\n"))
        if pool.tls is not None:  # who asks, for the provider's sidecar: over mTLS only
            parts.append(ex.downstream.listener.peer_line)
        parts.append(b"\r\n")
        return b"".join(parts)


def provider_backend(builder: RouterBuilder, spec: ExtAuthzHttp | ExtAuthzGrpc
                     ) -> Backend | None:
    """How this proxy reaches the provider: a mesh service as any call to it (its endpoints,
    mTLS unless it is DISABLE), an ExternalService host on ``spec.port`` as egress (plaintext,
    or TLS its DestinationPolicy originates; h2c for a gRPC provider); None (logged) when it
    is neither here."""
    from meshctl.api.extauthz import ExtAuthzGrpc
    from proxy.config import Address
    from proxy.origination import origination_for
    from proxy.routing import Backend, _balancer

    if not spec.port:  # no such provider (proxy.inbound.custom_check): it fails closed
        return None
    snap = builder.snapshot
    service = snap.services.get(spec.service)
    if service is not None:
        return builder._backend(service, None, "source")
    ext = snap.external.get(spec.service)
    if ext is None or not any(port == spec.port for port, _ in ext.ports):
        log.warning("ext_authz provider service %s:%d is neither a mesh service nor an "
                    "ExternalService port known to this proxy: its checks fail",
                    spec.service, spec.port)
        return None
    host = ext.host
    target = ext.target_ports.get(spec.port, spec.port)
    origination = origination_for(host, ext.policy.tls)
    pools = tuple(builder.pools.get(Address(a, target), None, "unknown", ext.policy,
                                    destination=(host, None), external=True,
                                    protocol="http2" if isinstance(spec, ExtAuthzGrpc)
                                    else "http1",
                                    origination=origination)
                  for a in ext.endpoints or (host,))
    balancer = _balancer(ext.policy.load_balancer, builder.rng) if len(pools) > 1 else None
    return Backend(host, None, pools, balancer, builder._prefix(host))


def appended(headers: list[tuple[bytes, bytes]], added: Sequence[tuple[bytes, bytes]]
             ) -> list[tuple[bytes, bytes]]:
    """``headers`` with each of ``added`` appended as Envoy's ext_authz appends (its header
    map's appendCopy): to the value of the first header of that name, after a `,` (`; ` for
    `cookie`, whose values are one line). A header the request lacks is not added: Envoy
    appends only to a header the request has (OkHttpResponse: "to the matched request header")."""
    out = list(headers)
    for name, value in added:
        for i, (have, was) in enumerate(out):
            if have.lower() == name:
                out[i] = (have, was + (b"; " if name == b"cookie" else b",") + value)
                break
    return out


def _named(patterns: HeaderPatterns, name: bytes) -> bool:
    return bool(patterns) and name.decode("latin-1") in patterns


class _Call:
    """The check's exchange on an upstream connection (the callbacks it makes)."""

    __slots__ = ("_body", "_conn", "_head_only", "_headers", "_size", "answer", "interim",
                 "pool", "response_started", "status", "upstream_keep_alive")

    # _conn: the connection while it carries the check (None once it ended, either way)

    def __init__(self, pool: EndpointPool, answer: asyncio.Future[Answer],
                 head_only: bool) -> None:
        self.pool = pool
        self.answer = answer
        self._head_only = head_only
        self._body: list[bytes] = []
        self._size = 0  # the body's bytes so far (a running count: chunks may be many)
        self._headers: list[tuple[bytes, bytes]] = []
        self._conn: UpstreamConnection | None = None
        self.interim = False
        self.response_started = False
        self.status = 0
        self.upstream_keep_alive = False

    def drop(self) -> None:
        """The check is over: a connection still carrying it (a timeout, a client gone) is
        closed, not left to a provider that may never answer."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()

    def _fail(self, why: str, error: type[CheckFailed] = CheckFailed) -> None:
        self._conn = None
        if not self.answer.done():
            self.answer.set_exception(error(why))

    def upstream_headers(self, conn: UpstreamConnection, status: int) -> bool:
        if status < 200:
            self.interim = True
            return False
        self.response_started = True
        self.status = status
        self.upstream_keep_alive = conn.parser.should_keep_alive()
        self._headers = [(n.lower(), v) for n, v in conn.header_pairs()]
        return self._head_only

    def upstream_body(self, chunk: bytes) -> None:
        self._body.append(chunk)
        self._size += len(chunk)
        if self._size > MAX_ANSWER:
            conn, self._conn = self._conn, None
            self._fail(f"answer body over {MAX_ANSWER} bytes")
            if conn is not None:
                conn.abort()

    def flush_out(self) -> None:
        pass

    def upstream_complete(self, conn: UpstreamConnection) -> None:
        self._conn = None
        if self.upstream_keep_alive:
            self.pool.release(conn)
        else:
            conn.exchange = None
            conn.close()
        if not self.answer.done():
            self.answer.set_result(Answer(self.status, self._headers, b"".join(self._body)))

    def upstream_failed(self, conn: UpstreamConnection, reason: str) -> None:
        self._fail(reason)
        conn.abort()

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if (self.response_started and not self.interim and conn.content_length is None
                and not conn.transfer_encoding):
            # A body delimited by the close (an HTTP/1.0 server's): complete at EOF.
            self.upstream_keep_alive = False
            self.upstream_complete(conn)
            return
        if not self.response_started and not self.interim and not conn.head_bytes:
            self._fail("connection lost before an answer", _Unanswered)
            return
        self._fail("connection lost before a complete answer")

    def upstream_upgraded(self, conn: UpstreamConnection, rest: bytes) -> None:
        self._fail("the provider answered 101")
        conn.abort()

    def upstream_write_paused(self, paused: bool) -> None:
        pass  # the check is a head alone


class ResponseHeaders:
    """A response's header edits: the rule's own (``base``), then the provider's
    (headersToDownstreamOnAllow, a gRPC answer's response_headers_to_add), ``pairs``
    replacing any of their names, ``added`` beside the app's (`append: true`)."""

    __slots__ = ("base", "names", "pairs")

    def __init__(self, base: HeaderEditor | Any, pairs: list[tuple[bytes, bytes]],
                 added: Sequence[tuple[bytes, bytes]] = ()) -> None:
        self.base = base
        self.names = frozenset(n for n, _ in pairs)
        self.pairs = [*pairs, *added]

    def apply(self, lines: list[bytes]) -> list[bytes]:
        """HTTP/1.1: serialized header lines (the status line first)."""
        out = self.base.apply(lines) if self.base is not None else list(lines)
        out = [out[0]] + [line for line in out[1:]
                          if line.split(b":", 1)[0].strip().lower() not in self.names]
        out.extend(n + b": " + v + b"\r\n" for n, v in self.pairs)
        return out

    def edit_pairs(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """(name, value) pairs: an HTTP/2 response, or a local reply."""
        out = self.base.edit_pairs(headers) if self.base is not None else list(headers)
        return [h for h in out if h[0].lower() not in self.names] + self.pairs

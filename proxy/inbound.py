"""Inbound admission: end-user JWTs, authorization policies and the local rate limit of this
service (or, at the gateway, the policies that select the gateway).

Semantics follow Istio: a token, if the request carries one and a RequestAuthentication
applies, must verify (else 401 ``jwt_invalid``) and gives the request its principal; then DENY
policies are checked; if any ALLOW policy exists a request must match one; with no ALLOW
policy, mesh identities (any verified SPIFFE peer) are allowed and, in STRICT mode, nothing
else reaches this point (the TLS handshake refused it). Each decision is counted under the
policy that made it; dry-run policies (`istio.io/dry-run`) are judged, never enforced, and
AUDIT policies mark what they match for the access log, deciding nothing (proxy.authzstats).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from proxy.authzstats import Audit, AuthzTable, compile_policies, noted
from proxy.clientaddress import trusted_client
from proxy.jwtauth import WWW_AUTHENTICATE, Authenticated, InvalidToken, JwtAuthenticator
from proxy.layers import retry_after_header
from proxy.policy.token_bucket import KeyedTokenBuckets, TokenBucket
from proxy.proxyread import direct_peer

if TYPE_CHECKING:
    from meshctl.api.authn import RequestAuthenticationSpec
    from meshctl.api.authz import AuthorizationPolicySpec, AuthorizationRule
    from meshctl.api.extauthz import ExtAuthzGrpc, ExtAuthzHttp, ExtensionProvider
    from meshctl.api.policy import RateLimit
    from proxy.authzstats import Count
    from proxy.exchange import Exchange
    from proxy.metrics import RequestStats

Refusal = tuple[str, int | None, tuple[tuple[bytes, bytes], ...]]
JWT_REFUSED: Refusal = ("jwt_invalid", None, WWW_AUTHENTICATE)  # 401, a token not verified
log = logging.getLogger("ami.proxy.inbound")


def _header_values(ex: Exchange) -> Callable[[str], list[str]]:
    """Every value of a request header (lower-case name), in order, for `when` conditions.

    A name's `_` spellings count as the name (`x_role` for `x-role`): WSGI/CGI servers and
    some frameworks read both as one header, so a DENY on `x-role` must see `x_role` too, and
    an ALLOW holds only if every spelling's values are allowed. Values are trimmed, as the
    app reads them (see Exchange.header): `x-role: admin ` is `admin`."""
    def values(name: str) -> list[str]:
        key = name.encode("latin-1").replace(b"_", b"-")
        return [v.decode("latin-1").strip(" \t") for n, v in ex.headers
                if len(n) == len(key) and n.lower().replace(b"_", b"-") == key]

    return values


def _matcher(identity: str | None, service: str | None, namespace: str | None, method: str,
             path: str, headers: Callable[[str], list[str]], principal: str | None,
             claims: Any, port: int, host: str, address: str,
             remote: str | None) -> Callable[[AuthorizationRule, bool], bool]:
    """Whether a rule matches this request, for the dry-run and AUDIT policies' judging."""
    return lambda r, deny: r.matches(identity, service, namespace, method, path, headers, deny,
                                     principal, claims, port, host, address, remote)


def _as_it_arrived(ex: Exchange) -> Exchange:
    """A copy of a tunnel's request to judge again: its head as it arrived (its `arrived`
    slot, set when authentication was to edit it), the tunnel's own left as forwarded."""
    view = copy.copy(ex)
    arrived = getattr(ex, "arrived", None)  # (unset: admitted without authentication)
    if arrived is not None:
        view.headers, view.query, view.target = arrived
    return view


def custom_check(policies: Sequence[AuthorizationPolicySpec],
                 providers: Sequence[ExtensionProvider],
                 ) -> tuple[str, ExtAuthzHttp | ExtAuthzGrpc,
                            tuple[AuthorizationRule, ...]] | None:
    """The CUSTOM policies' provider and their rules together (one provider per workload,
    as Istio: the control plane refuses a second), or None when none applies. A provider
    the snapshot does not describe, or a second provider (a static config's), fails closed:
    the requests the CUSTOM rules select get 403 `ext_authz_error`."""
    from meshctl.api.extauthz import ExtAuthzHttp

    custom = [p for p in policies if p.action == "CUSTOM" and p.rules]
    if not custom:
        return None
    names = sorted({p.provider or "" for p in custom})
    rules = tuple(r for p in custom for r in p.rules)
    if len(names) > 1:
        # (a static config's: the control plane refuses it) Every CUSTOM rule fails closed,
        # as Istio denies: none of them is let through unchecked.
        log.warning("AuthorizationPolicy CUSTOM names two or more providers for this "
                    "workload (%s), which takes one: the requests their rules select are "
                    "refused", ", ".join(names))
        return ",".join(names), ExtAuthzHttp("<several providers>", 0), rules
    name = names[0]
    spec: ExtAuthzHttp | ExtAuthzGrpc | None = next(
        (p.spec for p in providers if p.name == name), None)
    if spec is None:
        log.warning("AuthorizationPolicy CUSTOM names provider %r, which this proxy's "
                    "configuration does not describe: the requests it selects are refused",
                    name)
        spec = ExtAuthzHttp(f"<unknown provider {name}>", 0)
    return name, spec, rules


class InboundPolicy:
    """Runs before a request is forwarded to the local app; returns a refusal or None."""

    def __init__(self, policies: Sequence[AuthorizationPolicySpec], mtls_mode: str,
                 rate_limit: RateLimit | None, stats: RequestStats,
                 service: str, clock: Callable[[], float] = time.monotonic,
                 previous: InboundPolicy | None = None,
                 authentication: Sequence[RequestAuthenticationSpec] = (),
                 gateway: bool = False, port: int = 0, label: str | None = None,
                 proxy_protocol: bool = False,
                 providers: Sequence[ExtensionProvider] = (),
                 exported: bool = True) -> None:
        # The control plane sends only this service's policies; a static config may list
        # policies for other services too, and those do not apply here. At the gateway only
        # the policies that name it apply (a namespace-wide one is about the sidecars).
        applies = (lambda p: p.service == service) if gateway \
            else (lambda p: p.service in (None, service))
        policies = [p for p in policies if applies(p)]
        authn = [a for a in authentication if applies(a) and a.jwt_rules]
        self.authn = JwtAuthenticator(authn) if authn else None
        if gateway:
            rate_limit = None  # DestinationPolicy.rateLimit is the sidecar's
        # the enforced DENY and ALLOW policies, each with its counter (self.tally), the
        # dry-run ones and the AUDIT ones (proxy.authzstats); not ``exported``: a proxy
        # without the listener (a gateway without an inbound one) shows no series for it
        self.deny, self.allow, self.tally, self.dry, self.audit = compile_policies(
            policies, stats.authz if exported else AuthzTable(), label or service)
        # whether a request admitted is judged again, by the dry-run or the AUDIT policies
        # (one test per request where neither exists)
        self.watched = self.dry is not None or self.audit is not None
        # CUSTOM: (provider name, its spec, the rules selecting what it checks), run by
        # proxy.extauthz.ExtAuthzCheck before this policy's admit (proxy.routing)
        self.custom = custom_check(policies, providers)
        # remoteIpBlocks: the client's address is worked out only for policies naming one
        self.reads_remote = any(r.reads_remote for p in policies for r in p.rules)
        # a gateway behind a PROXY protocol balancer (--proxy-protocol): `ipBlocks` judge the
        # connection's own peer (the balancer), the rest the client the header named
        self.proxy_protocol = proxy_protocol
        self.reads_direct = proxy_protocol and any(r.reads_direct for p in policies
                                                   for r in p.rules)
        self.proxy_protocol = proxy_protocol  # (so do a CUSTOM policy's: proxy.extauthz)
        self.mtls_mode = mtls_mode
        self.port = port  # the local app's: what `to: [{ports: [...]}]` names
        self.stats = stats
        # its counters' label: the node's metrics name, as its requests' (`api.a` when
        # another namespace has an `api` too), so they add up with them
        self.labels = (("destination_service", label or service),)
        self.service = service
        self.rate_limit = rate_limit
        self.bucket: TokenBucket | None = None
        self.keyed: KeyedTokenBuckets | None = None
        if (previous is not None and rate_limit is not None
                and previous.rate_limit == rate_limit and previous.service == service):
            # Same limit as the policy being replaced: keep its buckets, so a config push
            # neither refills a drained bucket nor forgets the per-source ones. Nor does a
            # new metrics name (`ratings` -> `ratings.a`, once another namespace has a
            # `ratings`): the buckets hold no label, the counters take the new one.
            self.bucket, self.keyed = previous.bucket, previous.keyed
        elif rate_limit is not None:
            if rate_limit.per_source:
                self.keyed = KeyedTokenBuckets(rate_limit.requests_per_second, rate_limit.burst,
                                               clock)
            else:
                self.bucket = TokenBucket(rate_limit.requests_per_second, rate_limit.burst, clock)

    @property
    def needed(self) -> bool:
        return bool(self.tally or self.bucket or self.keyed or self.authn or self.custom)

    def admit(self, ex: Exchange, spend: bool = True) -> Refusal | None:
        """Why ``ex`` may not reach the app, or None; ``spend=False``: the rate limit is not
        asked (a request admitted before, judged again: proxy.revoke)."""
        logged = ex  # what the access log writes: the request, not the view judged again
        if not spend:
            ex = _as_it_arrived(ex)
        found = None
        if self.authn is not None:
            try:
                found = self.authenticate(ex, spend)
            except InvalidToken:
                return JWT_REFUSED
        return self.authorize(ex, found, spend, logged)

    def authenticate(self, ex: Exchange, spend: bool = True) -> Authenticated | None:
        """The principal and claims of the request's JWT (RequestAuthentication), or None
        without one; raises InvalidToken, counted, for a token that does not verify. Before
        any authorization, CUSTOM's included (as Istio's jwt_authn filter comes before its
        ext_authz and RBAC filters)."""
        assert self.authn is not None
        if spend and (ex.upgrade or ex.method == b"CONNECT"):
            # A tunnel's request is judged again at pushes (proxy.revoke), as it came:
            # authenticate removes its token from what is forwarded.
            ex.arrived = (ex.headers, ex.query, ex.target)
        try:
            return self.authn.authenticate(ex)
        except InvalidToken as err:
            log.debug("%s %s: JWT refused: %s", ex.method.decode("latin-1"), ex.path, err)
            self.stats.inc("ami_jwt_invalid", self.labels)
            raise

    def authorize(self, ex: Exchange, found: Authenticated | None = None, spend: bool = True,
                  logged: Exchange | None = None) -> Refusal | None:
        """``admit`` once the JWT is verified (``found``: its principal and claims): DENY,
        ALLOW, AUDIT and dry-run policies, then the rate limit."""
        conn = ex.downstream
        if logged is None:
            logged = ex
        principal, claims = found if found is not None else (None, None)
        tally = self.tally
        if tally is not None:
            identity = conn.peer_identity
            service, namespace = conn.peer_service, conn.peer_namespace
            method = ex.method.decode("latin-1")
            headers = _header_values(ex)
            host, address = ex.authority, conn.client_ip.decode("latin-1")
            remote = None
            if self.reads_remote and conn.listener.trusted_proxies:
                remote = trusted_client(ex, conn.listener.trusted_proxies).decode("latin-1")
            if self.reads_direct:
                remote = remote or address
                address = direct_peer(conn)
            for policy, count in tally.deny:
                if any(r.matches(identity, service, namespace, method, ex.path, headers,
                                 True, principal, claims, self.port, host, address, remote)
                       for r in policy.rules):
                    if self.audit is not None and spend:  # (a refusal: off the common path)
                        self._audit(_matcher(identity, service, namespace, method, ex.path,
                                             headers, principal, claims, self.port, host,
                                             address, remote), logged)
                    return self._deny(count, logged)
            decided: Count | None = tally.unmatched  # no ALLOW policy: none applied
            if tally.allow:
                decided = None
                for policy, count in tally.allow:
                    if any(r.matches(identity, service, namespace, method, ex.path, headers,
                                     False, principal, claims, self.port, host, address,
                                     remote) for r in policy.rules):
                        decided = count
                        break
            if self.watched and spend:  # dry-run or AUDIT policies: one test without them
                # (what they judge with is made only where they exist)
                matches = _matcher(identity, service, namespace, method, ex.path, headers,
                                   principal, claims, self.port, host, address, remote)
                if self.audit is not None:
                    self._audit(matches, logged)
                if self.dry is not None:
                    would = self.dry.judge(matches, decided is not None, bool(self.allow))
                    if would is not None:
                        noted(logged, 1, would)
            if decided is None:
                return self._deny(tally.unmatched, logged)
            if spend:
                decided.n += 1
        if not spend:
            return None
        if self.bucket is not None and not self.bucket.try_acquire():
            return self._limited(self.bucket.retry_after())
        if self.keyed is not None:
            key = conn.peer_identity or conn.client_ip
            if not self.keyed.try_acquire(key):
                return self._limited(self.keyed.retry_after(key))
        return None

    def admit_connection(self, identity: str | None, service: str | None,
                         namespace: str | None, client_ip: bytes = b"",
                         log: Any = None) -> str | None:
        """Why a TCP connection from this peer may not reach the app, or None (Istio's TCP
        semantics, `AuthorizationRule.matches_connection`); a refusal is counted. The rate
        limit, when set, spends one token per connection, after authorization (as Envoy's
        `local_ratelimit` network filter counts connections); JWTs are about requests.
        ``log``: what takes the decision's access log fields (its ``authz`` attribute)."""
        decided = self.connection_decision(identity, service, namespace,
                                           client_ip.decode("latin-1"), log)
        if decided is not None:
            return self._deny(decided, log)[0]
        if ((self.bucket is not None and not self.bucket.try_acquire())
                or (self.keyed is not None and not self.keyed.try_acquire(identity or client_ip))):
            self.stats.inc("ami_rate_limited", self.labels)
            return "rate_limited"  # no retry-after: the caller's sidecar answers for it
        return None

    def authorizes_connection(self, identity: str | None, service: str | None,
                              namespace: str | None, address: str | None = None) -> bool:
        """Whether the authorization policies let this peer's TCP connection (from
        ``address``) reach the app (nothing counted, no token spent: also asked of
        connections already admitted, when the policies change)."""
        return self.connection_decision(identity, service, namespace, address) is None

    def audit_open_connection(self, identity: str | None, service: str | None,
                              namespace: str | None, address: str | None, log: Any) -> bool:
        """Judge a TCP connection admitted before this push by its enforced AUDIT policies
        (proxy.revoke); whether one marks it (noted on ``log`` and counted, as at a first
        admission). Dry-run AUDIT policies judge first admissions only (counted once)."""
        if self.audit is None or not self.audit.enforced:
            return False
        port = self.port
        marked = Audit(self.audit.enforced, []).judge(
            lambda rule, deny: bool(rule.matches_connection(identity, service, namespace, port,
                                                            deny, address)))
        if marked is not None:
            noted(log, 2, marked)
        return marked is not None

    def connection_decision(self, identity: str | None, service: str | None,
                            namespace: str | None, address: str | None = None,
                            log: Any = None) -> Count | None:
        """The counter of the policy refusing this TCP connection, or None when it is
        allowed; with ``log`` (a first admission) the allowing policy and the dry-run ones
        count it, and ``log.authz`` gets what the access log says of it."""
        tally = self.tally
        if tally is None:
            return None
        port = self.port

        def matches(rule: Any, deny: bool) -> bool:
            return bool(rule.matches_connection(identity, service, namespace, port, deny,
                                                address))

        if log is not None and self.audit is not None:
            self._audit(matches, log)
        for policy, count in tally.deny:
            if any(matches(r, True) for r in policy.rules):
                return count
        decided: Count | None = tally.unmatched
        if tally.allow:
            decided = next((count for policy, count in tally.allow
                            if any(matches(r, False) for r in policy.rules)), None)
        if log is not None:
            if self.dry is not None:
                would = self.dry.judge(matches, decided is not None, bool(self.allow))
                if would is not None:
                    noted(log, 1, would)
            if decided is not None:
                decided.n += 1
        return None if decided is not None else tally.unmatched

    def revoked(self, refused: Count | None = None, log: Any = None) -> None:
        """Count a connection admitted before that these policies no longer let through
        (under ``refused``, the policy refusing it, when known, named on ``log``'s line)."""
        self._deny(refused, log)

    def _audit(self, matches: Any, ex: Any) -> None:
        """Judge a request (or connection) by the AUDIT policies; note the marking one."""
        marked = self.audit.judge(matches) if self.audit is not None else None
        if marked is not None:
            noted(ex, 2, marked)

    def _deny(self, refused: Count | None = None, ex: Any = None) -> Refusal:
        """Count a refusal (under the refusing policy's series too) and note the policy for
        the access log line of ``ex`` (a request or a TCP session)."""
        self.stats.inc("ami_authorization_denied", self.labels)
        if refused is not None:
            refused.n += 1
            if ex is not None:
                noted(ex, 0, refused.policy)
        return ("not_authorized", None, ())

    def _limited(self, wait: float) -> Refusal:
        self.stats.inc("ami_rate_limited", self.labels)
        return ("rate_limited", None, retry_after_header(wait))

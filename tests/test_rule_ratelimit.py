"""A Route rule's rateLimit in the proxy, at its seams: RuleLimits (the buckets by rule
identity, across snapshots), RateLimitPolicy (the admission step) and RouterBuilder (which
rules get one, in which order). End to end: tests/test_rule_ratelimit_mesh.py."""

from __future__ import annotations

import asyncio
import random
from types import SimpleNamespace
from typing import Any

from meshctl.api.policy import RateLimit
from proxy.config import Snapshot
from proxy.destinations import DestinationRegistry
from proxy.layers import CorsPolicy, RateLimitPolicy, RuleLimits
from proxy.metrics import RequestStats
from proxy.pools import PoolRegistry
from proxy.routing import Decision, RouterBuilder
from tests.fakes import FakeClock

LIMIT = RateLimit(0.01, 2, False)


def request(client_ip: bytes = b"10.0.0.1", identity: str | None = None) -> Any:
    return SimpleNamespace(downstream=SimpleNamespace(
        client_ip=client_ip, peer_identity=identity,
        listener=SimpleNamespace(trusted_proxies=0)))


def test_buckets_are_kept_while_the_rule_and_its_limit_are_the_same() -> None:
    stats = RequestStats()
    first = RuleLimits(stats)
    kept = first.limiter(("gateway", "default/web", "login", "web"), LIMIT)
    assert first.limiter(("gateway", "default/web", "login", "web"), LIMIT) is kept  # one build
    first.settle()
    second = RuleLimits(stats, previous=first)
    assert second.limiter(("gateway", "default/web", "login", "web"), LIMIT) is kept
    # another rule, another router, a changed limit: buckets of their own
    assert second.limiter(("gateway", "default/web", 0, "web"), LIMIT) is not kept
    assert second.limiter(("outbound", "default/web", "login", "web"), LIMIT) is not kept
    third = RuleLimits(stats, previous=second)
    changed = third.limiter(("gateway", "default/web", "login", "web"), RateLimit(0.01, 3))
    assert changed is not kept and changed[0] is not None
    # a rule left out of a snapshot is forgotten: back later, it starts full
    fourth = RuleLimits(stats, previous=RuleLimits(stats, previous=third))
    assert fourth.limiter(("gateway", "default/web", "login", "web"), RateLimit(0.01, 3)) \
        is not changed


def test_a_limited_request_is_refused_as_the_destinations_limit_refuses() -> None:
    """429 `rate_limited` (the status from proxy.reasons), retry-after in whole seconds,
    counted in ami_rate_limited_total under the destination; the next step runs only for an
    admitted request."""
    clock, stats = FakeClock(), RequestStats()
    passed: list[Any] = []
    policy = RateLimitPolicy(RuleLimits(stats, clock=clock).limiter("r", LIMIT), stats, "web",
                             lambda ex: passed.append(ex))
    assert policy(request()) is None and policy(request(b"10.0.0.2")) is None
    assert policy(request()) == ("rate_limited", None, ((b"retry-after", b"100"),))
    assert len(passed) == 2
    assert stats.counters[("ami_rate_limited", (("destination_service", "web"),))] == 1
    clock.advance(100)
    assert policy(request()) is None


def test_per_source_buckets_are_keyed_by_identity_else_address() -> None:
    clock, stats = FakeClock(), RequestStats()
    limiter = RuleLimits(stats, clock=clock).limiter("r", RateLimit(0.01, 1, True))
    policy = RateLimitPolicy(limiter, stats, "web", None)
    assert policy(request(b"10.0.0.1")) is None
    assert policy(request(b"10.0.0.1")) is not None
    assert policy(request(b"10.0.0.2")) is None
    spiffe = "spiffe://cluster.local/ns/default/sa/web"
    assert policy(request(b"10.0.0.1", spiffe)) is None  # a mesh peer: its identity's
    assert policy(request(b"10.0.0.9", spiffe)) is not None
    keyed = limiter[1]
    assert keyed is not None and len(keyed) == 3
    assert keyed._max_keys == 10000  # bounded: least recently used sources are dropped


def snapshot(rules: list[dict[str, Any]], labels: dict[str, str] | None = None) -> Snapshot:
    return Snapshot.from_dict({
        "version": "1",
        "node": {"service": "gateway", "labels": labels or {"version": "v1"}},
        "services": {"web": {"endpoints": [{"address": "127.0.0.1:9001",
                                            "labels": {"version": "v1"}}]}},
        "routes": [{"host": "web", "name": "web", "rules": rules}],
    })


RULES = [
    {"name": "login", "matches": [{"path": {"exact": "/login"}}], "backends": [{}],
     "rateLimit": {"requestsPerSecond": 0.01, "burst": 2},
     "cors": {"allowOrigins": [{"exact": "*"}]}},
    {"matches": [{"path": {"prefix": "/api"}}], "backends": [{}],
     "rateLimit": {"requestsPerSecond": 0.01, "burst": 2, "perSource": True}},
    {"backends": [{}], "timeout": "1s"},
]


async def decisions(snap: Snapshot, limits: RuleLimits, gateway_policy: Any = None,
                    kind: str = "outbound") -> list[Decision]:
    builder = RouterBuilder(snap, PoolRegistry(asyncio.get_running_loop()), random.Random(1),
                            lambda blocks: None, DestinationRegistry(limits.stats),
                            gateway_policy=gateway_policy, limits=limits)
    router = builder.gateway() if kind == "gateway" else builder.outbound()
    return [d for _, d in router._hosts["web"].rules]


async def test_only_limited_rules_get_a_step_first_of_their_own() -> None:
    """The limit runs after the rule's CORS step, which calls it for what it does not answer
    itself; a rule without a limit keeps no admission step at all (nothing more per
    request)."""
    stats = RequestStats()
    login, api, rest = await decisions(snapshot(RULES), RuleLimits(stats))
    assert isinstance(login.admit, CorsPolicy) and isinstance(login.admit.then, RateLimitPolicy)
    assert isinstance(api.admit, RateLimitPolicy) and api.admit.then is None
    assert api.admit.keyed is not None and api.admit.labels == (("destination_service", "web"),)
    assert rest.admit is None


async def test_the_gateways_authorization_runs_before_the_limit() -> None:
    """A request the gateway's policies deny spends no token."""
    stats = RequestStats()
    verdict: list[Any] = [("not_authorized", None, ())]
    # (no RequestAuthentication: the admission step is the policy's authorize)
    policy = SimpleNamespace(needed=True, authorize=lambda ex: verdict[0], authn=None,
                             custom=None)
    login, _, rest = await decisions(snapshot(RULES), RuleLimits(stats), policy, "gateway")
    assert login.admit is not None and rest.admit is not None
    for _ in range(5):
        assert login.admit(request())[0] == "not_authorized"
    verdict[0] = None
    with_origin = SimpleNamespace(**vars(request()), header=lambda name: None,
                                  decision=login, response_edits=None)
    assert [login.admit(with_origin) for _ in range(2)] == [None, None]
    assert login.admit(with_origin)[0] == "rate_limited"


async def test_a_preflight_spends_no_token_and_a_429_carries_the_cors_headers() -> None:
    """A browser's preflight is answered by the rule's CORS step without a token (with the
    limit first, three preflights drained the burst of 2 and the POSTs after them were 429),
    and the 429 of a limited request from an allowed origin has the allow headers, as every
    other local answer of a CORS rule, so the page can read it (and its retry-after)."""
    from proxy.reasons import local_reply

    login, _, _ = await decisions(snapshot(RULES), RuleLimits(RequestStats()), kind="gateway")

    def browser(method: bytes, **more: str) -> Any:
        headers = {"origin": "https://shop.example", **more}
        return SimpleNamespace(**vars(request()), method=method, header=headers.get,
                               decision=login, response_edits=None)

    assert login.admit is not None
    for _ in range(3):
        preflight = browser(b"OPTIONS", **{"access-control-request-method": "POST"})
        assert login.admit(preflight)[0] == "cors_preflight"
    assert [login.admit(browser(b"POST")) for _ in range(2)] == [None, None]
    limited = browser(b"POST")
    reason, status, extra = login.admit(limited)
    assert reason == "rate_limited"
    answer = local_reply(reason, status=status, extra_headers=extra,
                         edits=limited.response_edits).lower()
    assert answer.startswith(b"http/1.1 429")
    assert b"\r\naccess-control-allow-origin: *\r\n" in answer
    assert b"\r\nretry-after: " in answer


async def test_a_push_keeps_the_buckets_of_unchanged_rules() -> None:
    """Another rule changed (its timeout), the Route's other rules kept: the same buckets;
    the outbound and the gateway routers of one proxy have their own; a changed limit or
    rule name starts new ones. (`login` has CORS: its limit is the step CORS calls.)"""
    stats = RequestStats()
    first = RuleLimits(stats)
    login, api, _ = await decisions(snapshot(RULES), first)
    gw_login, _, _ = await decisions(snapshot(RULES), first, kind="gateway")
    assert gw_login.admit.then.bucket is not login.admit.then.bucket  # type: ignore[union-attr]
    first.settle()
    second = RuleLimits(stats, previous=first)
    changed = [*RULES[:2], {"backends": [{}], "timeout": "2s"}]
    login2, api2, _ = await decisions(snapshot(changed), second)
    assert login2.admit.then.bucket is login.admit.then.bucket  # type: ignore[union-attr]
    assert api2.admit.keyed is api.admit.keyed  # type: ignore[union-attr]
    third = RuleLimits(stats, previous=second)
    renamed = [{**RULES[0], "name": "signin"},
               {**RULES[1], "rateLimit": {"requestsPerSecond": 0.02, "burst": 2,
                                          "perSource": True}}, RULES[2]]
    login3, api3, _ = await decisions(snapshot(renamed), third)
    assert login3.admit.then.bucket is not login.admit.then.bucket  # type: ignore[union-attr]
    assert api3.admit.keyed is not api.admit.keyed  # type: ignore[union-attr]


async def test_a_limited_rule_inserted_before_an_unnamed_one_starts_full() -> None:
    """An unnamed rule is known by its place and its match blocks: a limited rule pushed in
    before a drained one (same limit) starts with full buckets; by place alone it took the
    drained ones over, refusing the first request it ever saw. (The moved rule starts full
    too: name rules with a limit to keep theirs, docs/traffic.md.)"""
    stats = RequestStats()
    login = {"matches": [{"path": {"exact": "/login"}}], "backends": [{}],
             "rateLimit": {"requestsPerSecond": 0.01, "burst": 1}}
    signup = {**login, "matches": [{"path": {"exact": "/signup"}}]}
    first = RuleLimits(stats)
    (drained, _) = [d.admit for d in await decisions(snapshot([login, {"backends": [{}]}]),
                                                     first)]
    assert drained is not None and drained(request()) is None
    assert drained(request())[0] == "rate_limited"
    first.settle()
    second = RuleLimits(stats, previous=first)
    inserted = (await decisions(snapshot([signup, login, {"backends": [{}]}]), second))[0]
    assert inserted.admit is not None and inserted.admit(request()) is None


def test_the_snapshot_names_a_route_with_a_limited_rule() -> None:
    """The Route's name is part of a limited rule's identity: the control plane ships it with
    any rule limited (as with any rule named), so naming another rule later keeps the
    buckets; a Route with neither keeps its snapshot bytes."""
    import json

    from meshctl.api.resources import load_documents
    from meshctl.controlplane.registry import ProxyInfo
    from meshctl.controlplane.snapshots import SnapshotBuilder

    def routes(rules: str) -> list[dict[str, Any]]:
        docs = ("apiVersion: ami.mesh/v1alpha1\nkind: Route\nmetadata: {name: frontend}\n"
                f"spec: {{host: web, rules: {rules}}}\n")
        web = ProxyInfo(name="web-1", service="web", namespace="default",
                        labels={"version": "v1"}, inbound="127.0.0.1:9001",
                        admin="127.0.0.1:1", mode="sidecar", ready=True)
        built = SnapshotBuilder(load_documents(docs, "t.yaml"), [web]).build(web)
        return list(json.loads(built.data)["routes"])

    limited = routes("[{backends: [{}], rateLimit: {requestsPerSecond: 1}}]")
    assert [r.get("name") for r in limited] == ["frontend"]
    assert [r.get("name") for r in routes("[{backends: [{}], timeout: 1s}]")] == [None]


async def test_an_outside_hosts_rule_is_limited_in_the_callers_sidecar() -> None:
    """An ExternalService host has no sidecar of its own, but a Route rule's limit is the
    caller's: one bucket for the host's HTTP ports, counted under the host's name."""
    snap = Snapshot.from_dict({
        "version": "1", "node": {"service": "web", "labels": {"version": "v1"}},
        "external": {"api.github.com": {"ports": [{"number": 80, "protocol": "HTTP"},
                                                  {"number": 8080, "protocol": "HTTP"}]}},
        "routes": [{"host": "api.github.com", "rules": [
            {"backends": [{}], "rateLimit": {"requestsPerSecond": 0.01, "burst": 1}}]}],
    })
    stats = RequestStats()
    builder = RouterBuilder(snap, PoolRegistry(asyncio.get_running_loop()), random.Random(1),
                            lambda blocks: None, DestinationRegistry(stats),
                            limits=RuleLimits(stats))
    ports = builder.outbound()._hosts["api.github.com"].ports  # type: ignore[attr-defined]
    first, second = (ports[p].rules[0][1].admit for p in (80, 8080))
    assert isinstance(first, RateLimitPolicy) and isinstance(second, RateLimitPolicy)
    assert first.bucket is second.bucket
    assert first.labels == (("destination_service", "api.github.com"),)
    assert first(request()) is None and second(request())[0] == "rate_limited"


async def test_an_http1_request_an_outside_grpc_port_refuses_spends_no_token() -> None:
    """An HTTP/2-only port of an outside host refuses HTTP/1.1 (`protocol_mismatch`) before
    the rule's limit, CORS or not: after it, each refused request spent a token and the
    HTTP/2 request after one was 429."""
    for cors in ({}, {"cors": {"allowOrigins": [{"exact": "*"}]}}):
        snap = Snapshot.from_dict({
            "version": "1", "node": {"service": "web", "labels": {"version": "v1"}},
            "external": {"api.example.com": {"ports": [{"number": 443, "protocol": "GRPC"}]}},
            "routes": [{"host": "api.example.com", "rules": [
                {"backends": [{}], "rateLimit": {"requestsPerSecond": 0.01, "burst": 1},
                 **cors}]}],
        })
        stats = RequestStats()
        builder = RouterBuilder(snap, PoolRegistry(asyncio.get_running_loop()),
                                random.Random(1), lambda blocks: None,
                                DestinationRegistry(stats), limits=RuleLimits(stats))
        host = builder.outbound()._hosts["api.example.com"]
        admit = host.ports[443].rules[0][1].admit  # type: ignore[attr-defined]

        def call(http2: bool) -> Any:
            return SimpleNamespace(**vars(request()), http2=http2, method=b"POST",
                                   header=lambda name: None, decision=None,
                                   response_edits=None)

        assert admit(call(False))[0] == "protocol_mismatch"
        assert admit(call(True)) is None
        assert admit(call(True))[0] == "rate_limited"
        assert admit(call(False))[0] == "protocol_mismatch"  # still refused in words

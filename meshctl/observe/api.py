"""HTTP routes for ``meshctl serve`` (mount with ``create_api_app(extra_routes=...)``).

    GET /api/v1/stat?service=&from=&window=30s   golden metrics per service version
    GET /api/v1/edges?window=30s                   who calls whom, with mTLS share
    GET /api/v1/routes?service=&namespace=&window=  golden metrics per named Route rule
    GET /api/v1/authz?service=&namespace=&window=   decisions per AuthorizationPolicy
    GET /api/v1/top?service=&seconds=2             busiest paths, from a short tap (privileged)
    GET /api/v1/tap?service=&path=&method=&n=      SSE of live requests (privileged)
    GET /api/v1/check                              grouped health checks
    GET /api/v1/proxies/{name}/config_dump         a sidecar's running config (privileged)
    GET /api/v1/proxies/{name}/logging             a sidecar's log levels
    POST /api/v1/proxies/{name}/logging?level=|LOGGER=|reset=true   set them (a write)
    GET /api/v1/dashboard/state                    everything the dashboard page draws
    GET / and /dashboard                           the dashboard page; /static/* its assets
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from meshctl.api import durations
from meshctl.controlplane.auth import bearer_matches
from meshctl.controlplane.describetarget import (
    declared_services,
    external_hosts,
    host_matches,
    known_names,
    suggest,
)
from meshctl.controlplane.httpapi import STORE, json_error, list_response
from meshctl.controlplane.names import ServiceNames
from meshctl.observe.admincall import AdminCaller
from meshctl.observe.authzreport import authz_report, policies_about
from meshctl.observe.canarychecks import canary_checks
from meshctl.observe.checks import (
    Group,
    all_checks,
    passthrough_checks,
    route_target_checks,
    tcp_route_checks,
)
from meshctl.observe.configdump import DumpUnavailable, fetch_config_dump
from meshctl.observe.dashboard import dashboard_state
from meshctl.observe.peerchecks import peer_authentication_checks
from meshctl.observe.proxylogging import LoggingUnavailable, call_logging
from meshctl.observe.ratelimitchecks import rate_limit_checks
from meshctl.observe.refchecks import KINDS as REFERRING_KINDS
from meshctl.observe.routestats import gateway_rules_about, routes_about, routes_report
from meshctl.observe.samples import DST
from meshctl.observe.scraper import ProxySource, Scraper, list_proxies
from meshctl.observe.selectorchecks import telemetry_checks
from meshctl.observe.sidecarchecks import scope_json, sidecar_checks
from meshctl.observe.tapfanin import tap_many, top_rows

STATIC = Path(__file__).parent / "static"
MAX_WINDOW = 600.0


class Observer:
    """The scraper plus its background task; started by ``run()`` or lazily by a request."""

    def __init__(self, source: ProxySource, *, interval: float = 2.0,
                 clock: Callable[[], float] = time.time,
                 admin: AdminCaller | None = None,
                 extra_checks: Callable[[], list[Group]] = list) -> None:
        self.admin = admin or AdminCaller()  # how each proxy's admin listener is reached
        self.scraper = Scraper(source, interval=interval, clock=clock, admin=self.admin)
        self.extra_checks = extra_checks  # check groups from the control plane's own state
        self.clock = clock
        self._task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Scrape until cancelled (for ``serve()``'s TaskGroup)."""
        # Known to ensure_started, so a request does not start a second scrape loop beside it.
        self._task = asyncio.current_task()
        await self.scraper.run()

    def ensure_started(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="observe")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _registered_names(proxies: list[dict[str, Any]]) -> ServiceNames:
    """The services the registered proxies (sidecars and gateways) run, by namespace."""
    return ServiceNames((str(p.get("service")), str(p.get("namespace") or "default"))
                        for p in proxies if p.get("service"))


def _no_service(service: str, namespace: str, why: str,
                proxies: list[dict[str, Any]]) -> web.Response:
    """The 404 of `routes`/`authz` for a name the namespace does not know, with the close
    registered names (`did you mean default/reviews?`), as `stat` and `describe svc` say."""
    registered = {(str(p.get("service")), str(p.get("namespace") or "default"))
                  for p in proxies if p.get("service")}
    return json_error(404, "NotFound", suggest(
        f"no service {service} in namespace {namespace} ({why})", service,
        known_names(registered, (), service)))


def parse_window(text: str | None, default: float = 30.0) -> float:
    """``30s``, ``5m``, ``1h`` or plain seconds, up to what the window keeps (a shorter one is
    1 s); 400 for anything else, ``nan``, ``inf``, 0 and negative ones included."""
    if not text:
        return default
    try:
        value = durations.parse_window(text)
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"window: {exc}") from None
    return min(max(value, 1.0), MAX_WINDOW)


def parse_seconds(text: str, name: str, low: float, high: float) -> float:
    """A ``?name=`` number of seconds, within [low, high]; 400 if not a finite number above 0."""
    try:
        value = durations.parse_seconds(text)
    except ValueError as exc:
        raise web.HTTPBadRequest(reason=f"{name}: {exc}") from None
    return min(max(value, low), high)


def observe_routes(observer: Observer, *, token: str) -> list[web.AbstractRouteDef]:
    """The routes; ``token`` guards tap and top (they show request paths)."""
    scraper = observer.scraper

    def privileged(request: web.Request) -> web.Response | None:
        if bearer_matches(request.headers.get("Authorization"), token):
            return None
        return json_error(401, "Unauthorized", "this needs 'Authorization: Bearer <token>' "
                          "(AMI_TOKEN or .ami/token)")

    async def mesh_names(request: web.Request) -> tuple[ServiceNames, set[str], set[str]]:
        """The services a proxy registered or the store declares, their metrics names, and
        the ExternalService hosts."""
        proxies = await list_proxies(scraper.source)
        registered = {(str(p["service"]), str(p.get("namespace") or "default"))
                      for p in proxies if p.get("service")}
        objects = await request.app[STORE].list()
        services = registered | declared_services(objects, ServiceNames(registered))
        names = ServiceNames(services)
        return names, {names.metrics_name(s, ns) for s, ns in services}, external_hosts(objects)

    async def metrics_label(request: web.Request, name: str) -> str:
        """``name`` as the metrics label it stands for: `reviews.default` and
        `reviews.default.svc.cluster.local` are `reviews` while one namespace has it (the
        forms README.md names a service by), so their rows are found; else ``name``."""
        if not name:
            return name
        names, _, _ = await mesh_names(request)
        home = names.resolve(name, "default")
        return names.metrics_name(*home) if home is not None else name

    async def unknown(request: web.Request, name: str, head: str) -> web.Response | None:
        """None when the mesh knows service ``name`` (as its metrics name, ``reviews`` or
        ``api.b``): a proxy registered it (a sidecar's, the gateway's), the store declares it
        (a Route, DestinationPolicy or Gateway names it, as for ``describe service``), an
        ExternalService host covers it, or the window has traffic to or from it. Else the
        404 to answer: ``head``, then the close names (or the known ones)."""
        if not name:
            return None
        names, labels, hosts = await mesh_names(request)
        if (name in labels or names.resolve(name, "default") is not None
                or any(host_matches(h, name) for h in hosts)):
            return None
        seen = scraper.window.services(observer.clock())
        if name in seen:
            return None
        known = known_names((), labels | hosts | seen, name)
        return json_error(404, "NotFound", suggest(
            f"{head}: no proxy of it is registered, no Route, DestinationPolicy, Gateway or "
            "ExternalService names it and no traffic to or from it was seen", name, known))

    async def stat(request: web.Request) -> web.Response:
        observer.ensure_started()
        q = request.query
        window = parse_window(q.get("window"))
        for param, head in (("service", "no service {!r}"),
                            ("from", "no service {!r} to count calls from")):
            missing = await unknown(request, q.get(param, ""), head.format(q.get(param)))
            if missing is not None:
                return missing
        rows = scraper.window.stat(observer.clock(), window,
                                   await metrics_label(request, q.get("service", "")) or None,
                                   await metrics_label(request, q.get("from", "")) or None)
        # scrapeInterval: a window shorter than two scrapes has no rate (meshctl canary widens)
        return web.json_response({"window": window, "scrapeInterval": scraper.interval,
                                  "rows": [r.as_json() for r in rows]})

    async def edges(request: web.Request) -> web.Response:
        observer.ensure_started()
        window = parse_window(request.query.get("window"))
        rows = scraper.window.edges(observer.clock(), window)
        return web.json_response({"window": window, "edges": [e.as_json() for e in rows]})

    async def routes(request: web.Request) -> web.Response:
        observer.ensure_started()
        q = request.query
        service = q.get("service", "")
        if not service:
            # The same path is every namespace's Route list (GET /api/v1/{plural}, `meshctl get
            # routes -A`); this route, registered first, would hide it.
            if q:
                return json_error(400, "BadRequest", "service: required")
            return await list_response(request, "Route", None)
        namespace = q.get("namespace") or "default"
        window = parse_window(q.get("window"))
        proxies = await list_proxies(scraper.source)
        names = _registered_names(proxies)
        label = names.metrics_name(service, namespace)
        store = request.app[STORE]
        declared = [*routes_about([o.resource for o in await store.list("Route")],
                                  service, namespace, names),
                    *gateway_rules_about([o.resource for o in await store.list("Gateway")],
                                         service, namespace, names)]
        rules, callers = scraper.window.rule_rates(observer.clock(), window)
        home = names.resolve(service, namespace)
        # a name that runs in one other namespace only: the traffic under its bare name
        # (`label`) is that namespace's service's, which does not make it known in this one
        seen = home in (None, (service, namespace)) and any(r.key[DST] == label
                                                            for r in callers)
        if not declared and home != (service, namespace) and not seen:
            return _no_service(service, namespace, "no sidecar, Route or traffic for it",
                               proxies)
        return web.json_response(routes_report(service, namespace, label, window, declared,
                                               rules, callers))

    async def authz(request: web.Request) -> web.Response:
        observer.ensure_started()
        q = request.query
        service = q.get("service", "")
        if not service:
            return json_error(400, "BadRequest", "service: required")
        namespace = q.get("namespace") or "default"
        window = parse_window(q.get("window"))
        proxies = await list_proxies(scraper.source)
        names = _registered_names(proxies)
        label = names.metrics_name(service, namespace)
        own = [p for p in proxies if p.get("service") == service
               and str(p.get("namespace") or "default") == namespace]
        declared = policies_about(
            [o.resource for o in await request.app[STORE].list("AuthorizationPolicy")],
            service, namespace, gateway=bool(own) and all(p.get("mode") == "gateway"
                                                          for p in own))
        counts = scraper.window.decision_counts(observer.clock(), window)
        home = names.resolve(service, namespace)
        if home is not None and home != (service, namespace):
            # the name runs in one other namespace only: the series under its bare name
            # (`label`) are that namespace's service's, not this one's
            counts = []
        if not declared and home != (service, namespace) \
                and not any(r.key[0] == label for r, _ in counts):
            return _no_service(service, namespace, "no sidecar of it is registered and no "
                               "decision about it was seen", proxies)
        return web.json_response(authz_report(service, namespace, label, window, declared,
                                              counts))

    async def check(request: web.Request) -> web.Response:
        body = await list_proxies(scraper.source)
        store = request.app[STORE]
        errors = [{"source": e.source, "message": e.message} for e in store.errors()]
        routes = [o.resource for o in await store.list("Route")]
        gateways = [o.resource for o in await store.list("Gateway")]
        peer_auths = [o.resource for o in await store.list("PeerAuthentication")]
        meshes = [o.resource for o in await store.list("MeshConfig")]
        policies = [o.resource for o in await store.list("DestinationPolicy")]
        sidecars = [o.resource for o in await store.list("Sidecar")]
        telemetries = [o.resource for o in await store.list("Telemetry")]
        canaries = await store.list("Canary")
        statuses = {o.key: await store.status(o.key) for o in canaries}
        groups = [*all_checks(body, errors, time.time()), *tcp_route_checks(routes, body),
                  *route_target_checks(
                      [o.resource for kind in REFERRING_KINDS for o in await store.list(kind)],
                      body),
                  *passthrough_checks(gateways, body), *rate_limit_checks(policies, body),
                  *peer_authentication_checks(peer_auths, meshes, body),
                  *sidecar_checks(sidecars, routes, meshes, body, scraper.window.latest),
                  *telemetry_checks(telemetries, body),
                  *canary_checks(canaries, await store.list("Route"),
                                 await store.list("DestinationPolicy"), statuses),
                  *observer.extra_checks()]
        return web.json_response({"groups": [g.as_json() for g in groups]})

    async def state(request: web.Request) -> web.Response:
        observer.ensure_started()
        window = parse_window(request.query.get("window"), 10.0)
        body = await dashboard_state(scraper, request.app[STORE], observer.clock(), window)
        return web.json_response(body)

    async def tap(request: web.Request) -> web.StreamResponse:
        denied = privileged(request)
        if denied is not None:
            return denied
        q = request.query
        if (n := q.get("n", "0")).isascii() and n.isdigit():
            limit = int(n)
        else:
            return json_error(400, "BadRequest", f"n: expected a count of requests, got "
                              f"{q['n']!r}")
        service = q.get("service", "")
        missing = await unknown(request, service, f"no service {service!r}")
        if missing is not None:
            return missing
        service = await metrics_label(request, service)  # the sidecars tap by that label
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        proxies = await list_proxies(scraper.source)
        async with tap_many(proxies, service=service, path=q.get("path", ""),
                            method=q.get("method", ""),
                            admin=observer.admin) as events:
            await resp.prepare(request)
            # The client going away (`meshctl tap | head`, a closed dashboard) ends the stream:
            # that is how a tap ends, not an error to log with a traceback.
            with contextlib.suppress(ConnectionResetError):
                await resp.write(b": tapping\n\n")
                sent = 0
                while not limit or sent < limit:
                    event = await events.get()
                    await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                    sent += 1
        return resp

    async def top(request: web.Request) -> web.Response:
        denied = privileged(request)
        if denied is not None:
            return denied
        seconds = parse_seconds(request.query.get("seconds", "2"), "seconds", 0.1, 10.0)
        service = request.query.get("service", "")
        missing = await unknown(request, service, f"no service {service!r}")
        if missing is not None:
            return missing
        service = await metrics_label(request, service)  # the sidecars tap by that label
        proxies = await list_proxies(scraper.source)
        collected: list[dict[str, Any]] = []
        async with tap_many(proxies, service=service, admin=observer.admin) as events:
            deadline = asyncio.get_running_loop().time() + seconds
            with contextlib.suppress(TimeoutError):
                while True:
                    left = deadline - asyncio.get_running_loop().time()
                    collected.append(await asyncio.wait_for(events.get(), max(left, 0.0)))
        return web.json_response({"seconds": seconds, "rows": top_rows(collected)})

    async def named_proxy(name: str) -> dict[str, Any] | web.Response:
        """The proxy listed under ``name`` with an admin address, else the error to answer."""
        proxies = await list_proxies(scraper.source)
        proxy = next((p for p in proxies if p.get("name") == name), None)
        if proxy is None:
            # docs and habits name a proxy `productpage-v1-15101`; the demo's is `productpage-v1`
            close = difflib.get_close_matches(name, [str(p.get("name")) for p in proxies], n=3)
            hint = f"; did you mean {' or '.join(close)}?" if close else ""
            return json_error(404, "NotFound", f"no proxy named {name!r} (meshctl proxy-status "
                                               f"lists them){hint}")
        if not proxy.get("admin"):
            return json_error(409, "Conflict", f"proxy {name!r} registered no admin address")
        return proxy

    async def config_dump(request: web.Request) -> web.Response:
        denied = privileged(request)
        if denied is not None:
            return denied
        name = request.match_info["name"]
        proxy = await named_proxy(name)
        if isinstance(proxy, web.Response):
            return proxy
        try:
            dump = await fetch_config_dump(observer.admin.call(proxy))
        except DumpUnavailable as exc:
            return json_error(502, "BadGateway", f"proxy {name!r}: {exc}")
        sidecars = [o.resource for o in await request.app[STORE].list("Sidecar")]
        dump["sidecarScope"] = scope_json(sidecars, proxy)
        return web.json_response(dump)

    async def proxy_logging(request: web.Request) -> web.Response:
        # (POST is a write: the API's middleware has checked the token already)
        name = request.match_info["name"]
        proxy = await named_proxy(name)
        if isinstance(proxy, web.Response):
            return proxy
        query = dict(request.query) if request.method == "POST" else None
        try:
            status, body = await call_logging(observer.admin.call(proxy), query)
        except LoggingUnavailable as exc:
            return json_error(502, "BadGateway", f"proxy {name!r}: {exc}")
        if status != 200:  # the sidecar refused the request (400): its words
            return json_error(400, "Invalid", f"proxy {name!r}: {body.get('error')}")
        return web.json_response({"proxy": name, "loggers": body["loggers"]})

    async def page(_: web.Request) -> web.FileResponse:
        observer.ensure_started()
        return web.FileResponse(STATIC / "index.html")

    return [
        web.get("/api/v1/stat", stat), web.get("/api/v1/edges", edges),
        web.get("/api/v1/routes", routes), web.get("/api/v1/authz", authz),
        web.get("/api/v1/check", check), web.get("/api/v1/dashboard/state", state),
        web.get("/api/v1/tap", tap), web.get("/api/v1/top", top),
        web.get("/api/v1/proxies/{name}/config_dump", config_dump),
        web.get("/api/v1/proxies/{name}/logging", proxy_logging),
        web.post("/api/v1/proxies/{name}/logging", proxy_logging),
        web.get("/", page), web.get("/dashboard", page), web.static("/static", STATIC),
    ]

"""The control plane's HTTP API (aiohttp): CRUD, watch (SSE) and apply for every resource kind.

Paths (``{plural}``: routes, destinationpolicies, authorizationpolicies,
requestauthentications, peerauthentications, meshconfigs, gateways, externalservices,
telemetries)::

    GET    /api/v1/{plural}                              all namespaces
    GET    /api/v1/namespaces/{ns}/{plural}              list
    POST   /api/v1/namespaces/{ns}/{plural}              create (409 if it exists)
    GET    /api/v1/namespaces/{ns}/{plural}/{name}       read (with status)
    PUT    /api/v1/namespaces/{ns}/{plural}/{name}       update (409 on stale resourceVersion)
    DELETE /api/v1/namespaces/{ns}/{plural}/{name}       delete (?resourceVersion= precondition)
    POST   /api/v1/apply                                 YAML or JSON documents, all or nothing
                                                         ?dryRun=All: check, write nothing
    GET    /api/v1/watch                                 SSE; ?kind=&namespace=&replay=&status=
    GET    /api/v1/errors                                hand edits the store rejected
    GET    /openapi.json                                 OpenAPI 3.1 description

Every error is ``{"error": "<words>", "reason": "NotFound|Conflict|Invalid|Unauthorized|..."}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import yaml
from aiohttp import web

from meshctl.api.errors import ValidationError
from meshctl.api.gamma import parent_status
from meshctl.api.kindnames import KIND_PLURALS, kind_for
from meshctl.api.resources import Resource, load_documents, load_yaml, parse_document
from meshctl.controlplane import translated
from meshctl.controlplane.auth import bearer_matches, is_loopback
from meshctl.controlplane.dirfiles import MAX_FILE_BYTES
from meshctl.controlplane.errors import (
    BadRequest,
    Conflict,
    Invalid,
    NotFound,
    StoreError,
    Unauthorized,
)
from meshctl.controlplane.openapi import openapi_document
from meshctl.controlplane.store import (
    Event,
    EventType,
    Key,
    Store,
    StoredObject,
    Watch,
    canonical_content,
    content_equal,
    new_issues,
    overlay,
)
from proxy.hostguard import BrowserGuard

log = logging.getLogger(__name__)
API = "/api/v1"
STORE = web.AppKey("store", Store)
_WATCHES: web.AppKey[set[Watch]] = web.AppKey("watches")
APPLY_LOCK = web.AppKey("apply_lock", asyncio.Lock)
# (service, namespace) of every service with a registered sidecar: an HTTPRoute's status
KNOWN_SERVICES: web.AppKey[Callable[[], Iterable[tuple[str, str]]]] = web.AppKey(
    "known_services")
_PLURAL = "{plural:" + "|".join(KIND_PLURALS.values()) + "}"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HTTP_REASONS = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed",
                 413: "RequestEntityTooLarge", 415: "UnsupportedMediaType"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY_BYTES = MAX_FILE_BYTES  # a request body (aiohttp's client_max_size): 1 MiB


def create_api_app(
    store: Store,
    *,
    token: str,
    extra_routes: Iterable[web.AbstractRouteDef] | None = None,
    open_reads: bool = False,
    heartbeat: float = 15.0,
    known_hosts: Iterable[str] = (),
) -> web.Application:
    """The API as an aiohttp app; ``extra_routes`` (status, metrics, dashboard) share its auth.

    Writes need ``Authorization: Bearer <token>``; reads are open to loopback peers, and to
    every peer when ``open_reads`` is set (e.g. a dashboard published from a container). Such
    token-less reads must not come from another site's web page (proxy/hostguard.py): their
    Host is an IP address, localhost, this machine's name or one of ``known_hosts``.
    """
    guard = BrowserGuard(known_hosts, option="meshctl serve --allowed-host NAME")
    app = web.Application(middlewares=[_errors_middleware,
                                       _auth_middleware(token, open_reads, guard)],
                          client_max_size=MAX_BODY_BYTES)
    app[STORE] = store
    app[_WATCHES] = set()
    app[APPLY_LOCK] = asyncio.Lock()
    app.router.add_get("/openapi.json", _openapi)
    app.router.add_post(f"{API}/apply", _apply)
    app.router.add_get(f"{API}/watch", _watch_handler(heartbeat))
    app.router.add_get(f"{API}/errors", _errors)
    app.router.add_get(f"{API}/{_PLURAL}", _list)
    collection = f"{API}/namespaces/{{ns}}/{_PLURAL}"
    app.router.add_get(collection, _list)
    app.router.add_post(collection, _create)
    app.router.add_get(collection + "/{name}", _get)
    app.router.add_put(collection + "/{name}", _update)
    app.router.add_delete(collection + "/{name}", _delete)
    if extra_routes is not None:
        app.add_routes(extra_routes)
    app.on_shutdown.append(_end_watches)
    return app


def json_error(status: int, reason: str, message: str) -> web.Response:
    """The one error shape of the API."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return web.json_response({"error": message, "reason": reason}, status=status, headers=headers)


@web.middleware
async def _errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except StoreError as exc:
        return json_error(exc.status, exc.reason, str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason
        if exc.status == 413:  # aiohttp's text says the limit and the size sent
            message = (f"request body over the API's limit of {MAX_BODY_BYTES // 1024} KiB "
                       f"({exc.text}); send it in smaller parts")
        resp = json_error(exc.status, _HTTP_REASONS.get(exc.status, "Error"), message)
        if "Allow" in exc.headers:  # a 405 must say which methods the resource takes
            resp.headers["Allow"] = exc.headers["Allow"]
        return resp
    except (ConnectionResetError, asyncio.CancelledError):
        raise  # the client went away: nobody to answer
    except Exception as exc:  # a bug: still the API's JSON error shape, details in the log
        if request.writer.output_size:
            raise  # a streaming answer already started: aiohttp ends the connection
        log.exception("%s %s failed", request.method, request.path)
        return json_error(500, "InternalError", f"internal error ({type(exc).__name__}); "
                                                "the control plane's log has the details")


def _auth_middleware(token: str, open_reads: bool, guard: BrowserGuard
                     ) -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization")
        if bearer_matches(header, token):
            return await handler(request)
        needed = (request.method not in _READ_METHODS
                  or not (open_reads or is_loopback(request.remote)))
        if needed and header:
            raise Unauthorized("the bearer token sent is not this control plane's: use the "
                               "token in its <state-dir>/token (AMI_TOKEN or .ami/token)")
        if request.method not in _READ_METHODS:
            raise Unauthorized("writes need 'Authorization: Bearer <token>' "
                               "(AMI_TOKEN or .ami/token)")
        if needed:
            raise Unauthorized("reads from outside this machine need a bearer token")
        # A read admitted for where it comes from, not for a token: not for a web page.
        refusal = guard.refusal(request.headers.get("Host"), request.headers.get("Origin"),
                                request.headers.get("Sec-Fetch-Site"))
        if refusal is not None:
            return json_error(403, "Forbidden", f"{request.method} {request.path}: {refusal}")
        return await handler(request)

    return auth


# -- reads -----------------------------------------------------------------------------------
async def _object_json(store: Store, obj: StoredObject,
                       services: Callable[[], Iterable[tuple[str, str]]] | None = None
                       ) -> dict[str, Any]:
    status = await store.status(obj.key)
    if obj.resource.kind in ("HTTPRoute", "GRPCRoute") and services is not None:
        # Gateway API status.parents, worked out when read from what the mesh has now (which
        # services have sidecars, which Routes exist): nothing to store or keep current.
        routes = [o.resource for o in await store.list("Route", obj.resource.namespace)]
        status = {**status, **parent_status(obj.resource, set(services()), routes)}
    return obj.to_dict(status=status)


async def _list(request: web.Request) -> web.Response:
    return await list_response(request, _kind(request), request.match_info.get("ns"))


async def list_response(request: web.Request, kind: str, namespace: str | None) -> web.Response:
    """A `<Kind>List` of one namespace's objects, or of all namespaces' (namespace None)."""
    store = request.app[STORE]
    objs = await store.list(kind, namespace)
    services = request.app.get(KNOWN_SERVICES)
    items = [await _object_json(store, o, services) for o in objs]
    return web.json_response({"apiVersion": "ami.mesh/v1alpha1", "kind": f"{kind}List",
                              "items": items})


async def _get(request: web.Request) -> web.Response:
    store = request.app[STORE]
    obj = await store.get(_kind(request), request.match_info["ns"], request.match_info["name"])
    if obj is None:
        raise NotFound(f"{_kind(request)} {request.match_info['ns']}/"
                       f"{request.match_info['name']} not found")
    return web.json_response(await _object_json(store, obj, request.app.get(KNOWN_SERVICES)))


async def _errors(request: web.Request) -> web.Response:
    errors = request.app[STORE].errors()
    return web.json_response({"items": [
        {"source": e.source, "message": e.message, "objects": ["/".join(k) for k in e.keys]}
        for e in errors]})


async def _openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app.router))


# -- writes ----------------------------------------------------------------------------------
async def _create(request: web.Request) -> web.Response:
    store = request.app[STORE]
    resource = _parse_one(await _read_body(request), request, name=None)
    async with request.app[APPLY_LOCK]:
        await check_set(store, [resource])
        stored = await store.create(resource)
    return web.json_response(stored.to_dict(), status=201)


async def _update(request: web.Request) -> web.Response:
    store = request.app[STORE]
    doc = await _read_body(request)
    resource = _parse_one(doc, request, name=request.match_info["name"])
    expected = doc.get("metadata", {}).get("resourceVersion")
    async with request.app[APPLY_LOCK]:
        await check_set(store, [resource])
        stored = await store.update(resource, expected)
    return web.json_response(stored.to_dict())


async def _delete(request: web.Request) -> web.Response:
    store = request.app[STORE]
    key = (_kind(request), request.match_info["ns"], request.match_info["name"])
    async with request.app[APPLY_LOCK]:
        # A delete is a change like any other: it may not leave a Route naming subsets that
        # no DestinationPolicy defines any more (that traffic would get 503s).
        current = [o.resource for o in await store.list()]
        issues = new_issues(current, overlay(current, [], {key}))
        if issues:
            raise Invalid(f"deleting {key[0]} {key[1]}/{key[2]} would leave: "
                          + "; ".join(str(i) for i in issues)
                          + " (change or delete what uses it first)")
        gone = await store.delete(*key, request.query.get("resourceVersion"))
    return web.json_response(gone.to_dict())


async def _apply(request: web.Request) -> web.Response:
    """Create or update every document; validate the whole set first and apply none if bad.

    ``?dryRun=All`` (kubectl's server-side dry run) runs the same checks and plan under the
    same lock, then writes nothing: no new resourceVersion, no watch event, no push. Each
    result then carries ``object``, as the apply would store it, and ``live``, as stored now
    (null for a new object), so ``meshctl diff`` compares the two from one consistent view.
    """
    store = request.app[STORE]
    dry_run = _dry_run(request)
    resources = _parse_many(await _body_text(request), request)
    results = []
    async with request.app[APPLY_LOCK]:
        # what an Istio document's earlier translation made and its new one does not
        pruned = await translated.stale(store, resources)
        await check_set(store, resources, {o.key for o in pruned})
        plan = await _plan_apply(store, resources, pruned)
        if dry_run:
            return web.json_response({"dryRun": True, "results": [
                *(_pruned_result(o, o.to_dict()) for o in pruned),
                *(_dry_result(r, c) for r, c in plan)]})
        with store.batch(resources):  # checked as a whole above: written in any order
            for obj in pruned:  # first: only Routes are pruned, and nothing uses a Route
                gone = await store.delete(*obj.key, str(obj.resource_version))
                results.append({**_pruned_result(obj, None),
                                "resourceVersion": str(gone.resource_version)})
            for res, current in plan:
                outcome = _outcome(res, current)
                if current is None:
                    stored = await store.create(res)
                elif outcome == "unchanged":
                    stored = current
                else:
                    stored = await store.update(res, current.resource_version)
                results.append({"kind": res.kind, "namespace": res.namespace,
                                "name": res.name, "result": outcome,
                                "resourceVersion": str(stored.resource_version)})
    return web.json_response({"results": results})


def _outcome(res: Resource, current: StoredObject | None) -> str:
    if current is None:
        return "created"
    return "unchanged" if content_equal(current.resource, res) else "configured"


def _pruned_result(obj: StoredObject, live: dict[str, Any] | None) -> dict[str, Any]:
    """The result of an object pruned by an apply (``live``: for a dry run, as stored)."""
    kind, namespace, name = obj.key
    result = {"kind": kind, "namespace": namespace, "name": name, "result": "pruned",
              "origin": translated.origin_of(obj.resource)}
    return result if live is None else {**result, "object": None, "live": live}


def _dry_result(res: Resource, current: StoredObject | None) -> dict[str, Any]:
    """A dry-run result: what the apply would do, the object it would store (the version
    it would take is not known, so none) and the object stored now."""
    result: dict[str, Any] = {"kind": res.kind, "namespace": res.namespace, "name": res.name,
                              "result": _outcome(res, current),
                              "object": canonical_content(res),
                              "live": None if current is None else current.to_dict()}
    if current is not None:
        result["resourceVersion"] = str(current.resource_version)
    return result


def _dry_run(request: web.Request) -> bool:
    """``?dryRun=All``: as Kubernetes, the one accepted value; anything else is refused
    rather than taken as a real write."""
    if "dryRun" not in request.query:
        return False
    if request.query["dryRun"] != "All":
        raise BadRequest(f"dryRun must be 'All' (got {request.query['dryRun']!r})")
    return True


async def _plan_apply(store: Store, resources: list[Resource],
                      pruned: Sequence[StoredObject] = ()
                      ) -> list[tuple[Resource, StoredObject | None]]:
    """Each resource with the object it replaces; Conflict, before anything is written, if
    any write would be refused (all or nothing).

    A document carrying ``metadata.resourceVersion`` (e.g. saved from ``meshctl get -o yaml``)
    changes the object only if it still has that version, as kubectl's apply: otherwise a
    concurrent change would be silently undone. Re-applying the same content is no change.
    """
    plan: list[tuple[Resource, StoredObject | None]] = []
    problems: list[str] = []
    for obj in pruned:
        try:
            await store.check_write(obj.key)
        except StoreError as exc:
            kind, namespace, name = obj.key
            problems.append(f"{kind} {namespace}/{name} (to prune): {exc}")
    for res in resources:
        where = f"{res.source} doc {res.doc}: " if res.source and res.doc else ""
        current = await store.get(*res.key)
        if current is not None and content_equal(current.resource, res):
            plan.append((res, current))
            continue
        try:
            await store.check_write(res.key)
        except StoreError as exc:
            problems.append(f"{where}{res.kind} {res.namespace}/{res.name}: {exc}")
            continue
        current = await store.get(*res.key)  # check_write may have re-read the store's source
        origin = translated.origin_of(res)
        if current is not None and origin is not None \
                and translated.origin_of(current.resource) != origin:
            problems.append(
                f"{where}{res.kind} {res.namespace}/{res.name} exists and is not {origin}'s "
                f"translation (it was written as {_written_as(current)}): the apply would "
                f"replace it; delete it first (meshctl delete {res.kind.lower()} {res.name} "
                f"-n {res.namespace}) or rename the Istio document")
            continue
        expected = res.resource_version
        if current is not None and expected and expected != str(current.resource_version):
            problems.append(
                f"{where}{res.kind} {res.namespace}/{res.name} changed since resourceVersion "
                f"{expected} (now {current.resource_version}): get it again and re-apply your "
                "edit, or leave out metadata.resourceVersion to overwrite")
        plan.append((res, current))
    if problems:
        raise Conflict("\n".join(problems))
    return plan


def _written_as(obj: StoredObject) -> str:
    origin = translated.origin_of(obj.resource)
    return f"{origin}'s translation" if origin else f"an Ami {obj.resource.kind}"


async def check_set(store: Store, changes: list[Resource],
                    removed: set[Key] | None = None) -> None:
    """Invalid if the changes (and the ``removed`` objects) add a cross-document issue to
    what the store holds."""
    current = [o.resource for o in await store.list()]
    issues = new_issues(current, overlay(current, changes, removed or set()))
    if issues:
        # an issue in an object the change did not touch (a Route whose subsets a new
        # DestinationPolicy no longer defines) is the change's doing: say so, and what to do
        sent = {(r.source, r.doc) for r in changes}
        raise Invalid("\n".join(
            str(i) if (i.source, i.doc) in sent
            else f"{i} (this change would leave it so: keep what it uses in the objects "
                 "changed, or change it first)" for i in issues))


# -- decoding --------------------------------------------------------------------------------
def _kind(request: web.Request) -> str:
    kind = kind_for(request.match_info["plural"])
    assert kind is not None  # the route pattern only admits known plurals
    return kind


async def _body_text(request: web.Request) -> str:
    """The body decoded by its charset (request.text() would raise a 500 for a bad one)."""
    charset = request.charset or "utf-8"
    try:
        return (await request.read()).decode(charset)
    except (LookupError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not {charset} text: {exc}") from exc


async def _read_body(request: web.Request) -> dict[str, Any]:
    text = await _body_text(request)
    try:
        is_json = request.content_type == "application/json"
        doc = json.loads(text) if is_json else load_yaml(text)  # no aliases, as apply
    except (ValueError, yaml.YAMLError) as exc:
        raise BadRequest(f"request body is not valid JSON/YAML: {exc}") from exc
    except RecursionError:  # JSON nested thousands deep (the YAML loader caps nesting)
        raise BadRequest("request body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise BadRequest("request body must be one resource document (a mapping)")
    return doc


def _parse_one(doc: dict[str, Any], request: web.Request, name: str | None) -> Resource:
    """Parse a single-object body, checking it against the path's kind, namespace and name."""
    kind, ns = _kind(request), request.match_info["ns"]
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        raise Invalid("request: metadata: required mapping is missing")
    meta.setdefault("namespace", ns)
    for field, want, got in (("kind", kind, doc.get("kind")),
                             ("metadata.namespace", ns, meta.get("namespace")),
                             ("metadata.name", name, meta.get("name"))):
        if want is not None and got != want:
            raise BadRequest(f"{field} is {got!r} but the path says {want!r}")
    try:
        return parse_document(doc, source="request")
    except ValidationError as exc:
        raise Invalid(str(exc), exc) from exc


def _parse_many(text: str, request: web.Request) -> list[Resource]:
    """Documents of an apply body: a YAML stream, or JSON (a list, one object, or {items}).

    A JSON ``{items, origins}`` body names each document's file: ``origins[i]`` is
    ``{"source": "routes/reviews.yaml", "doc": 1}``, so one all-or-nothing apply of many files
    reports errors as ``routes/reviews.yaml doc 1: ...`` (``meshctl apply`` sends this), with
    ``"translatedFrom"`` for an object translated from an Istio document in this apply (what
    its earlier translation made and this one does not is pruned).
    """
    source = request.query.get("source", "request")
    try:
        if request.content_type != "application/json":
            return load_documents(text, source, lists=True)
        data = json.loads(text)
        docs = data.get("items", [data]) if isinstance(data, dict) else data
        if not isinstance(docs, list):
            raise BadRequest("apply body must be a list of documents")
        origins = data.get("origins") if isinstance(data, dict) else None
        if origins is not None and not (
                isinstance(origins, list) and len(origins) == len(docs)
                and all(isinstance(o, dict) and isinstance(o.get("source"), str)
                        and isinstance(o.get("doc"), int)
                        and isinstance(o.get("translatedFrom", ""), str) for o in origins)):
            raise BadRequest("origins must list one {source, doc[, translatedFrom]} per item")
        resources, issues = [], []
        for index, doc in enumerate(docs, start=1):
            where, number = ((origins[index - 1]["source"], origins[index - 1]["doc"])
                             if origins else (source, index))
            try:
                parsed = parse_document(doc, source=where, index=number)
                if origins and origins[index - 1].get("translatedFrom"):
                    parsed = dataclasses.replace(
                        parsed, origin=origins[index - 1]["translatedFrom"])
                resources.append(parsed)
            except ValidationError as exc:
                issues.extend(exc.issues)
        if issues:
            raise ValidationError(issues)
        return resources
    except ValidationError as exc:
        raise Invalid(str(exc), exc) from exc
    except (ValueError, yaml.YAMLError) as exc:
        raise BadRequest(f"apply body is not valid JSON/YAML: {exc}") from exc
    except RecursionError:  # JSON nested thousands deep (the YAML loader caps nesting)
        raise BadRequest("apply body is nested too deeply") from None


# -- watch -----------------------------------------------------------------------------------
def _watch_handler(heartbeat: float) -> Handler:
    async def watch(request: web.Request) -> web.StreamResponse:
        """Server-sent events; a first ``: watching`` comment says the subscription is live."""
        word = request.query.get("kind")
        kind = kind_for(word) if word else None
        if word and kind is None:
            raise BadRequest(f"unknown kind {word!r}")
        replay = request.query.get("replay", "").lower() in ("1", "true", "yes")
        # status=true: status changes too (a Canary's steps), each object sent with its status
        status = request.query.get("status", "").lower() in ("1", "true", "yes")
        store = request.app[STORE]
        stream = store.watch(kind=kind, namespace=request.query.get("namespace"),
                             replay=replay, status=status)
        request.app[_WATCHES].add(stream)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        try:
            await resp.prepare(request)
            await resp.write(b": watching\n\n")
            while True:
                try:
                    event = await asyncio.wait_for(anext(stream), heartbeat)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")
                    continue
                except StopAsyncIteration:
                    break
                if event.type is EventType.ERROR or event.object is None:
                    head, data = "", {"error": event.error}
                else:
                    head = f"id: {event.object.resource_version}\n"
                    data = event.object.to_dict(await _status_of(store, event) if status
                                                else None)
                frame = f"{head}event: {event.type}\ndata: {json.dumps(data)}\n\n"
                await resp.write(frame.encode())
        except ConnectionResetError:
            pass  # the client went away
        finally:
            stream.close()
            request.app[_WATCHES].discard(stream)
        return resp

    return watch


async def _status_of(store: Store, event: Event) -> dict[str, Any] | None:
    """The object's status now (a deleted object has none)."""
    if event.type is EventType.DELETED or event.object is None:
        return None
    try:
        return await store.status(event.object.key)
    except NotFound:  # deleted since: its DELETED event follows
        return None


async def _end_watches(app: web.Application) -> None:
    """Close SSE streams at shutdown so their handlers return instead of holding it up."""
    watches: set[Watch] = app[_WATCHES]
    for stream in list(watches):
        stream.close()

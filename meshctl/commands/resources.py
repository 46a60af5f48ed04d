"""``meshctl apply``, ``get``, ``delete`` and ``describe``: resources on the control plane."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from meshctl import output
from meshctl.api.errors import Issue, ValidationError
from meshctl.api.istio.common import TRANSLATED_FROM, istio_path
from meshctl.api.kindnames import ISTIO_STORED_AS, KIND_PLURALS
from meshctl.api.resources import (
    Resource,
    load_documents,
    parse_document,
    validate_set,
    yaml_files,
)
from meshctl.client import ControlPlaneClient, ControlPlaneError
from meshctl.commands.calls import (
    ALL,
    KIND_HELP,
    SERVICE,
    error_text,
    make_client,
    object_ref,
    reports_errors,
    request_json,
    resolve_kind,
)
from meshctl.commands.objectpage import describe_text
from meshctl.controlplane.dirfiles import MAX_FILE_BYTES


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``apply``, ``get``, ``delete`` and ``describe``."""
    apply = subparsers.add_parser(
        "apply", help="create or update resources from files",
        description="Send every document of the files (directories: their *.yaml files, "
                    "recursively, sorted) in one all-or-nothing apply; print created, "
                    "configured or unchanged per object.")
    files_arg(apply, required=True)
    namespace_for_files_arg(apply)
    apply.add_argument("--dry-run", nargs="?", const="client", default="none",
                       choices=("none", "client", "server"),
                       help="client (also bare --dry-run): only validate, offline (like "
                            "meshctl validate); server: the control plane runs the whole apply "
                            "(every check) and writes nothing")
    apply.set_defaults(func=run_apply)

    get = subparsers.add_parser("get", help="list or show resources",
                                description=f"KIND is one of {KIND_HELP} (singular or plural), "
                                            "or all: every kind's objects, a table per kind.")
    get.add_argument("kind", type=_get_kind, metavar="KIND")
    get.add_argument("name", nargs="?", metavar="NAME")
    scope = get.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", default="default")
    scope.add_argument("-A", "--all-namespaces", action="store_true")
    get.add_argument("-o", "--output", choices=output.OUTPUT_FORMATS, default="table")
    get.add_argument("-w", "--watch", action="store_true",
                     help="after the table, a row per change (status included) until Ctrl-C")
    get.set_defaults(func=run_get)

    delete = subparsers.add_parser("delete", help="delete resources by name or by file",
                                   description="meshctl delete KIND NAME, or -f FILE|DIR.")
    delete.add_argument("kind", nargs="?", type=resolve_kind, metavar="KIND")
    delete.add_argument("name", nargs="?", metavar="NAME")
    files_arg(delete, required=False)
    namespace_for_files_arg(delete)
    delete.set_defaults(func=run_delete)

    describe = subparsers.add_parser(
        "describe", help="an object, its status and its proxies; or a service: what applies",
        description=f"KIND is one of {KIND_HELP}, or service|svc: one page of everything "
                    "that shapes that service's traffic (also for a service with no instance "
                    "yet, and for an ExternalService host).")
    describe.add_argument("kind", type=_describe_kind, metavar="KIND")
    describe.add_argument("name", metavar="NAME")
    describe.add_argument("-n", "--namespace", default="default")
    describe.add_argument("-o", "--output", choices=("text", "json", "yaml"), default="text",
                          help="json|yaml: the gathered data (of a service; else the object)")
    describe.set_defaults(func=run_describe)


def _unknown(word: str, err: argparse.ArgumentTypeError) -> str:
    """An unknown kind, saying which kind an Istio one is stored as."""
    return str(err) if word.lower() in ISTIO_STORED_AS else f"unknown kind {word!r}"


def _get_kind(word: str) -> str:
    if word.lower() == ALL:
        return ALL
    try:
        return resolve_kind(word)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{_unknown(word, err)}; expected one of {KIND_HELP}, "
                                         "or all") from None


def _describe_kind(word: str) -> str:
    if word.lower() in ("service", "services", "svc"):
        return SERVICE
    try:
        return resolve_kind(word)
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{_unknown(word, err)}; expected one of {KIND_HELP}, "
                                         "service|svc") from None


def files_arg(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument("-f", "--filename", dest="paths", action="append", required=required,
                        metavar="FILE|DIR|-", help="file, directory or - for stdin (repeatable)")


def namespace_for_files_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", default=None,
                        help="namespace of the documents that name none (default: default); "
                             "a document naming another one is refused")


# -- apply / delete -f -----------------------------------------------------------------------
def load_files(paths: list[str], namespace: str | None = None) -> list[Resource]:
    """Parse every document of every file (``-`` is stdin); raises with all issues of all.

    With ``namespace`` (``-n``), documents without ``metadata.namespace`` are in it and a
    document naming another namespace is an issue, as with kubectl.
    """
    resources: list[Resource] = []
    issues: list[Issue] = []
    for path in paths:
        try:
            if path == "-":
                resources.extend(load_documents(sys.stdin.read(), "<stdin>", lists=True))
                continue
            for file in yaml_files(Path(path)):
                try:
                    resources.extend(load_documents(file.read_text(encoding="utf-8"), str(file),
                                                    lists=True))
                except (OSError, UnicodeDecodeError) as err:
                    issues.append(Issue(str(file), None, "", f"cannot read: {err}"))
        except ValidationError as err:
            issues.extend(err.issues)
    if namespace is not None:
        resources = [placed for r in resources
                     if (placed := _in_namespace(r, namespace, issues)) is not None]
    if issues:
        raise ValidationError(issues)
    return resources


def _in_namespace(resource: Resource, namespace: str, issues: list[Issue]) -> Resource | None:
    """``resource`` in ``namespace`` (from ``-n``); None, with an issue, if it names another."""
    meta = resource.raw.get("metadata") or {}
    declared = meta.get("namespace")
    if declared is None:
        doc = {**resource.raw, "metadata": {**meta, "namespace": namespace}}
        try:
            placed = parse_document(doc, resource.source, resource.doc)
            return dataclasses.replace(placed, origin=resource.origin)
        except ValidationError as err:
            issues.extend(err.issues)
            return None
    if declared != namespace:
        issues.append(Issue(resource.source, resource.doc, "metadata.namespace",
                            f"{declared!r} does not match -n {namespace}"))
        return None
    return resource


def print_issues(err: ValidationError) -> int:
    for issue in err.issues:
        print(f"error: {issue}", file=sys.stderr)
    return 1


@reports_errors
def run_apply(args: argparse.Namespace) -> int:
    """Documents are parsed here (exact file errors, nothing sent if any is bad); checks
    across documents and against the store run on the server, all or nothing."""
    offline = args.dry_run == "client"
    try:
        resources = load_files(args.paths, args.namespace)
        if offline:
            issues = validate_set(resources)
            if issues:
                print_issues(ValidationError(issues))
                # the files alone lack what the control plane holds (a Route's subsets)
                print("hint: --dry-run (client) checks these files as a set on their own; "
                      "give the files they depend on too, or check them against the control "
                      "plane with --dry-run=server", file=sys.stderr)
                return 1
    except ValidationError as err:
        return print_issues(err)
    if not resources:  # as kubectl: an empty directory or stream is most likely a mistake
        print("error: no objects passed to apply", file=sys.stderr)
        return 1
    if offline:
        for r in resources:
            print(f"{named(r.kind, r.namespace, r.name, resources)} valid (dry run, offline)")
        return 0
    client = make_client(args)
    server_dry_run = args.dry_run == "server"
    too_big = oversize(resources)
    if too_big:
        print(f"error: {too_big}", file=sys.stderr)
        return 1
    status, answer = post_apply(client, resources, dry_run=server_dry_run)
    if status == 413:  # (a control plane with a smaller limit than this meshctl knows)
        print(f"error: {error_text(answer)}; {oversize(resources, 0)}", file=sys.stderr)
        return 1
    if status != 200:
        for line in server_errors(answer, resources) or [f"HTTP {status}"]:
            print(f"error: {line}", file=sys.stderr)
        return 1
    suffix = " (server dry run)" if server_dry_run else ""
    for result in client.field(answer if isinstance(answer, dict) else {}, "results", list):
        ref = named(result["kind"], result.get("namespace"), result["name"], resources)
        if result.get("origin") and " -> " not in ref:  # pruned: not among the documents
            ref = f"{result['origin']} -> {ref}"
        print(f"{ref} {result['result']}{suffix}")
    for warning in _apply_warnings(client, resources):
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def server_errors(answer: Any, resources: list[Resource]) -> list[str]:
    """The control plane's error lines, each about a document translated from Istio's YAML
    on that document's own field path (the control plane checks the translation)."""
    maps = {f"{r.source} doc {r.doc}: ": r.istio_paths for r in resources
            if r.istio_paths and r.source is not None}
    lines = []
    for line in error_text(answer).splitlines():
        for prefix, paths in maps.items():
            path, sep, message = line.removeprefix(prefix).partition(": ")
            if line.startswith(prefix) and sep and " " not in path:
                line = f"{prefix}{istio_path(paths, path)}: {message}"
                break
        lines.append(line)
    return lines


def named(kind: str, namespace: str | None, name: str, resources: list[Resource]) -> str:
    """``route.ami.mesh/reviews``, or for an object translated from an Istio document
    ``virtualservice.networking.istio.io/reviews -> route.ami.mesh/reviews``."""
    ref = object_ref(kind, name)
    for r in resources:
        if r.origin is not None and r.key == (kind, namespace or r.namespace, name):
            return f"{r.origin} -> {ref}"
    return ref


def apply_body(resources: list[Resource]) -> dict[str, Any]:
    """The JSON body of ``POST /api/v1/apply``: the documents and where each came from."""
    return {"items": [r.to_dict() for r in resources],
            "origins": [{"source": r.source, "doc": r.doc,
                         **({"translatedFrom": r.origin} if r.origin else {})}
                        for r in resources]}


def oversize(resources: list[Resource], limit: int = MAX_FILE_BYTES) -> str:
    """"" if the apply of ``resources`` fits the API's request limit; else what to say: the
    size, the limit and the files, largest first. An apply is one all-or-nothing request,
    so it is not split: the user chooses how to divide the files (``limit`` 0: the files
    only, for a control plane that refused with its own limit)."""
    size = len(json.dumps(apply_body(resources)).encode())
    if limit and size <= limit:
        return ""
    by_file: dict[str, int] = {}
    for r in resources:
        by_file[r.source or "<stdin>"] = (by_file.get(r.source or "<stdin>", 0)
                                          + len(json.dumps(r.to_dict()).encode()))
    files = ", ".join(f"{name} ({_kib(n)})"
                      for name, n in sorted(by_file.items(), key=lambda kv: -kv[1]))
    if not limit:
        return f"the files sent: {files}"
    return (f"the apply would send {_kib(size)}, over the control plane's request limit of "
            f"{_kib(limit)} (one all-or-nothing request, nothing was sent): {files}; apply "
            "fewer files at a time, or make the largest smaller")


def _kib(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MiB" if n >= 1024 * 1024 else f"{n / 1024:.0f} KiB"


def post_apply(client: ControlPlaneClient, resources: list[Resource], *,
               dry_run: bool) -> tuple[int, Any]:
    """``POST /api/v1/apply`` (``?dryRun=All``: check and plan only) of parsed documents,
    each with its file and document number for the server's errors."""
    body = apply_body(resources)
    path = "/api/v1/apply?dryRun=All" if dry_run else "/api/v1/apply"
    return request_json(client, "POST", path, body)


def _apply_warnings(client: ControlPlaneClient, resources: list[Resource]) -> list[str]:
    """Bound Gateways' hosts their Gateway does not serve, applied objects naming services
    nothing knows, Routes of TCP services with fields
    their connections never see, Gateway
    passthrough entries to HTTP services, DestinationPolicy rate limits no sidecar
    enforces, PeerAuthentication portLevelMtls ports no selected sidecar serves, Sidecars
    selecting no sidecar and Sidecars selecting one that another Sidecar selects; the
    proxies are asked which services are TCP (and where services live) only when some Route
    has such a field, some Gateway passes TLS through, some policy has a rateLimit, some
    PeerAuthentication a portLevelMtls or some Sidecar is applied."""
    from meshctl.api.kinds import GatewaySpec, RouteSpec
    from meshctl.api.peerauthn import PeerAuthenticationSpec
    from meshctl.api.policy import DestinationPolicySpec
    from meshctl.api.rules import http_only_fields
    from meshctl.observe.checks import passthrough_warnings, tcp_route_warnings
    from meshctl.observe.peerchecks import port_warnings
    from meshctl.observe.ratelimitchecks import rate_limit_warnings
    from meshctl.observe.refchecks import NAMING
    from meshctl.observe.sidecarchecks import sidecar_warnings

    routes = [r for r in resources
              if isinstance(r.spec, RouteSpec) and http_only_fields(r.spec.rules)]
    gateways = [r for r in resources if isinstance(r.spec, GatewaySpec) and r.spec.passthrough]
    limited = [r for r in resources if isinstance(r.spec, DestinationPolicySpec)
               and r.spec.policy.rate_limit is not None]
    ported = [r for r in resources if isinstance(r.spec, PeerAuthenticationSpec)
              and r.spec.ports]
    sidecars = [r for r in resources if r.kind == "Sidecar"]
    naming = [r for r in resources if isinstance(r.spec, NAMING)]
    unserved = _unserved_host_warnings(client, resources)
    if not routes and not gateways and not limited and not ported and not sidecars \
            and not naming:
        return unserved
    status, answer = request_json(client, "GET", "/api/v1/proxies")
    if status != 200 or not isinstance(answer, dict):
        # Without the registry a rate limit for another namespace's service (`api.b`) is
        # still known by its host's form; the other warnings need the registry.
        return [*unserved, *rate_limit_warnings(limited, [])]
    proxies = list(answer.get("proxies") or [])
    return [*unserved, *_reference_warnings(client, naming, resources, proxies),
            *tcp_route_warnings(routes, proxies), *passthrough_warnings(gateways, proxies),
            *rate_limit_warnings(limited, proxies), *port_warnings(ported, proxies),
            *sidecar_warnings(sidecars, proxies),
            *_sidecar_conflicts(client, sidecars, proxies)]


def _unserved_host_warnings(client: ControlPlaneClient, applied: list[Resource]) -> list[str]:
    """The applied bound Gateways' (VirtualServices bound to an Istio Gateway) hosts that
    their Gateway, applied or stored, does not serve (the stored ones are asked for only
    then)."""
    from meshctl.api.gatewayhosts import bound_host_warnings
    from meshctl.api.kinds import GatewaySpec

    bound = [r for r in applied if isinstance(r.spec, GatewaySpec) and r.spec.gateway]
    if not bound:
        return []
    try:
        stored = _stored(client, ("Gateway",), strict=True)
    except ControlPlaneError:
        return []  # (whether the Gateways exist is not known: nothing to say)
    gateways = {r.key: r for r in stored}
    gateways.update((r.key, r) for r in applied)
    return [line for r in bound for line in bound_host_warnings(
        r, gateways.get(("Gateway", r.namespace, str(getattr(r.spec, "gateway", "")))))]


def _reference_warnings(client: ControlPlaneClient, naming: list[Resource],
                        applied: list[Resource], proxies: list[dict[str, Any]]) -> list[str]:
    """The applied objects' fields naming services that no registered proxy, ExternalService
    or other object (stored or applied) declares (the stored ones are asked for only then)."""
    from meshctl.observe.refchecks import KINDS, reference_warnings, unknown_references

    if not naming:
        return []
    objects = {r.key: r for r in _stored(client, KINDS)}
    objects.update((r.key, r) for r in applied)
    return reference_warnings(unknown_references(naming, objects.values(), proxies))


def _stored(client: ControlPlaneClient, kinds: tuple[str, ...], *,
            strict: bool = False) -> list[Resource]:
    """The stored objects of ``kinds``, of every namespace (none of a kind it cannot list;
    ``strict``: the ControlPlaneError raised then)."""
    found = []
    for kind in kinds:
        try:
            items = client.get(kind, namespace=None)
        except ControlPlaneError:
            if strict:
                raise
            continue
        for item in items:
            try:
                found.append(parse_document(item))
            except ValidationError:
                continue  # (the control plane stores only what validates)
    return found


def _sidecar_conflicts(client: ControlPlaneClient, applied: list[Resource],
                       proxies: list[dict[str, Any]]) -> list[str]:
    """Applied Sidecars with a selector matching a registered sidecar that another Sidecar's
    selector matches too (the stored ones are asked for only then)."""
    from meshctl.api.sidecar import SidecarSpec
    from meshctl.observe.selectorchecks import sidecar_conflict_warnings

    if not any(isinstance(r.spec, SidecarSpec) and r.spec.labels for r in applied):
        return []
    status, answer = request_json(client, "GET", "/api/v1/sidecars")
    if status != 200 or not isinstance(answer, dict):
        return []
    stored = []
    for item in answer.get("items") or []:
        try:
            stored.append(parse_document(item))
        except ValidationError:
            continue  # (the control plane stores only what validates)
    return sidecar_conflict_warnings(applied, stored, proxies)


@reports_errors
def run_delete(args: argparse.Namespace) -> int:
    """Delete one named object, or every object declared in the files; 1 if any is missing."""
    if args.paths:
        if args.kind or args.name:
            print("error: give either KIND NAME or -f, not both", file=sys.stderr)
            return 2
        try:
            loaded = load_files(args.paths, args.namespace)
        except ValidationError as err:
            return print_issues(err)
        keys = [r.key for r in loaded]
        # Routes before the DestinationPolicies whose subsets they use: each delete must
        # leave a consistent mesh, so the users go first.
        keys.sort(key=lambda k: k[0] != "Route")
    elif args.kind and args.name:
        loaded = []
        keys = [(args.kind, args.namespace or "default", args.name)]
    else:
        print("error: meshctl delete needs KIND NAME or -f FILE", file=sys.stderr)
        return 2
    client, code = make_client(args), 0
    others = _other_translations(client, loaded, keys) if loaded else {}
    origins = {r.key: r.origin for r in loaded if r.origin is not None}
    for kind, namespace, name in [*keys, *others]:
        try:
            origin = origins.get((kind, namespace, name))
            if origin is not None and (made := _made_from(client, kind, namespace, name)) \
                    not in (origin, _MISSING):
                # an Istio document deletes only what it made (as apply refuses to replace)
                written = f"translated from {made}" if made else f"written as an Ami {kind}"
                print(f"error: {kind.lower()}.ami.mesh/{name} is not {origin}'s "
                      f"translation ({written}): not deleted; delete it by name if you mean "
                      f"it (meshctl delete {kind.lower()} {name} -n {namespace})",
                      file=sys.stderr)
                code = 1
                continue
            client.delete(kind, name, namespace)
            origin = others.get((kind, namespace, name))
            ref = named(kind, namespace, name, loaded)
            print(f"{origin} -> {ref} deleted" if origin else f"{ref} deleted")
        except ControlPlaneError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 1
    return code


_MISSING = object()  # no such object: its delete reports it


def _made_from(client: ControlPlaneClient, kind: str, namespace: str, name: str) -> object:
    """The Istio document a stored object was translated from, None for one written in Ami's
    own kinds, ``_MISSING`` when there is none (the delete that follows says so)."""
    try:
        item = client.get(kind, name, namespace)
    except ControlPlaneError as exc:
        if exc.status == 404:
            return _MISSING
        raise
    meta = (item.get("metadata") or {}) if isinstance(item, dict) else {}
    origin = (meta.get("annotations") or {}).get(TRANSLATED_FROM)
    return origin if isinstance(origin, str) else None


def _other_translations(client: ControlPlaneClient, loaded: list[Resource],
                        keys: list[tuple[str, str, str]]
                        ) -> dict[tuple[str, str, str], str]:
    """Stored objects translated from the files' Istio documents that their translation
    now does not make (a Route of a host since dropped from the VirtualService, applied
    before the edit): deleting the document deletes everything made from it."""
    wanted = {(r.kind, r.namespace, r.origin) for r in loaded if r.origin is not None}
    extra: dict[tuple[str, str, str], str] = {}  # each with its origin
    for kind, namespace in sorted({(k, ns) for k, ns, _ in wanted}):
        try:
            items = client.get(kind, None, namespace)
        except ControlPlaneError:
            continue  # (each delete below reports what is wrong with the control plane)
        for item in items:
            meta = item.get("metadata") or {}
            key = (kind, namespace, str(meta.get("name")))
            origin = (meta.get("annotations") or {}).get(TRANSLATED_FROM)
            if isinstance(origin, str) and (kind, namespace, origin) in wanted \
                    and key not in keys:
                extra[key] = origin
    return extra


# -- get / describe --------------------------------------------------------------------------
@reports_errors
def run_get(args: argparse.Namespace) -> int:
    """Print one object or a list as a table (columns per kind), YAML or JSON."""
    client = make_client(args)
    if args.watch:
        if args.kind == ALL:
            print("error: --watch needs one KIND, not all", file=sys.stderr)
            return 2
        if args.name is not None and args.all_namespaces:
            print("error: a NAME needs one namespace (-n), not -A", file=sys.stderr)
            return 2
        from meshctl.commands.getwatch import run_get_watch

        return run_get_watch(args, client)
    if args.kind == ALL:
        from meshctl.commands.getall import run_get_all

        return run_get_all(args, client)
    if args.name is not None:
        if args.all_namespaces:
            print("error: a NAME needs one namespace (-n), not -A", file=sys.stderr)
            return 2
        docs = [client.get(args.kind, args.name, args.namespace)]
    else:
        docs = client.get(args.kind, None, None if args.all_namespaces else args.namespace)
    if args.output == "json":
        value = docs[0] if args.name is not None else {
            "apiVersion": "ami.mesh/v1alpha1", "kind": "List", "items": docs}
        sys.stdout.write(output.to_json(value))
    elif args.output == "yaml":
        sys.stdout.write(output.to_yaml(docs[0]) if args.name is not None
                         else output.to_yaml_stream(docs))
    elif not docs:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No {KIND_PLURALS[args.kind]} found in {where}.", file=sys.stderr)
    else:
        sys.stdout.write(output.resource_table(args.kind, docs, args.all_namespaces))
    return 0


@reports_errors
def run_describe(args: argparse.Namespace) -> int:
    """The object's metadata, status conditions and spec, then every proxy's sync state;
    for a service, what applies to it (meshctl.commands.servicepage)."""
    client = make_client(args)
    if args.kind == SERVICE:
        from meshctl.commands import servicepage

        return servicepage.run(args, client, request_json)
    doc = client.get(args.kind, args.name, args.namespace)
    if args.output != "text":
        sys.stdout.write(output.to_json(doc) if args.output == "json" else output.to_yaml(doc))
        return 0
    store_version, proxies = _proxies(client)
    text = describe_text(doc, store_version, proxies)
    if doc.get("kind") == "PeerAuthentication" and proxies is not None:
        from meshctl.commands.peerdescribe import selected_sidecars

        namespace = (doc.get("metadata") or {}).get("namespace") or "default"
        text += "\n".join(selected_sidecars(doc, client.get("PeerAuthentication", None,
                                                             namespace),
                                             client.get("MeshConfig", None, None), proxies))
        text += "\n"
    sys.stdout.write(text)
    return 0


def _proxies(client: ControlPlaneClient) -> tuple[int | None, list[dict[str, Any]] | None]:
    """(store version, proxies) from ``GET /api/v1/proxies``; (None, None) if unavailable."""
    status, answer = request_json(client, "GET", "/api/v1/proxies")
    if status != 200 or not isinstance(answer, dict):
        return None, None
    return answer.get("storeVersion"), list(answer.get("proxies") or [])

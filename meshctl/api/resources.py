"""Kubernetes-style resource documents: parse, load from YAML files, and check across documents."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshctl.api import fields as F
from meshctl.api import istio
from meshctl.api.annotations import annotation_map, check_annotations
from meshctl.api.errors import Issue, ValidationError, fail
from meshctl.api.extauthz import custom_policy_issues
from meshctl.api.external import ExternalServiceSpec
from meshctl.api.fields import Fields
from meshctl.api.hostnames import service_of
from meshctl.api.httproute import GATEWAY_API_VERSIONS, HTTPRouteSpec
from meshctl.api.kinds import KINDS, MESH_CONFIG_NAME, GatewaySpec, RouteSpec, Spec
from meshctl.api.peerauthn import PeerAuthenticationSpec, overlap
from meshctl.api.policy import DestinationPolicySpec
from meshctl.api.sidecar import SidecarSpec
from meshctl.api.telemetry import TelemetrySpec
from meshctl.api.yamlwalk import walk_yaml

API_VERSION = "ami.mesh/v1alpha1"
# Kinds of another API group, and the apiVersions they are accepted with
FOREIGN_KINDS = {"HTTPRoute": GATEWAY_API_VERSIONS, "GRPCRoute": GATEWAY_API_VERSIONS[:1]}
DEFAULT_NAMESPACE = "default"


@dataclass(frozen=True, slots=True)
class Resource:
    """One validated document; ``raw`` is the original mapping, ``spec`` its typed form."""

    kind: str
    name: str
    namespace: str
    labels: Mapping[str, str]
    resource_version: str | None
    spec: Spec
    raw: Mapping[str, Any] = field(compare=False, repr=False)
    source: str | None = field(default=None, compare=False)  # file it came from, if any
    doc: int | None = field(default=None, compare=False)  # 1-based document number in source
    # metadata.annotations; Ami reads `istio.io/dry-run` (meshctl.api.annotations)
    annotations: Mapping[str, str] = field(default_factory=dict)
    # the Istio document it was translated from (`virtualservice.networking.istio.io/reviews`)
    origin: str | None = field(default=None, compare=False)
    # then: (Ami field path, the Istio document's path it was written at), for errors
    istio_paths: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name): unique within a set of resources."""
        return (self.kind, self.namespace, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The document in normal form: defaults filled into metadata, status dropped."""
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        if self.resource_version is not None:
            metadata["resourceVersion"] = self.resource_version
        result: dict[str, Any] = {"apiVersion": api_version_of(self), "kind": self.kind,
                                  "metadata": metadata}
        if "spec" in self.raw:
            result["spec"] = copy.deepcopy(self.raw["spec"])
        return result


def api_version_of(r: Resource) -> str:
    """The apiVersion a resource is written with: Ami's, or for a Gateway API kind the one
    of its document (v1 or v1beta1)."""
    version = r.raw.get("apiVersion")
    return version if r.kind in FOREIGN_KINDS and isinstance(version, str) else API_VERSION


@dataclass(frozen=True, slots=True)
class _Metadata:
    name: str = ""
    namespace: str = DEFAULT_NAMESPACE
    labels: Mapping[str, str] = field(default_factory=dict)
    resource_version: str | None = None
    annotations: Mapping[str, str] = field(default_factory=dict)


def parse_document(doc: object, source: str | None = None, index: int | None = None) -> Resource:
    """Validate one decoded document; raises ValidationError with every issue in it."""
    try:
        f = Fields(doc, "")
        kind = f.required("kind", _kind, "")
        f.required("apiVersion", _api_version(kind), "")
        meta = f.required("metadata", _parse_metadata, _Metadata())
        spec: Spec | None = None
        if kind in KINDS:
            info = KINDS[kind]
            if info.spec_required:
                spec = f.required("spec", info.parse, None)
            else:
                spec = f.value("spec", info.parse, None) or info.parse({}, "spec")
            check_annotations(kind, meta.annotations, f, spec)
            if kind == "MeshConfig" and meta.name and meta.name != MESH_CONFIG_NAME:
                f.add("metadata.name", f"a MeshConfig must be named '{MESH_CONFIG_NAME}', "
                      f"got '{meta.name}'")
        else:
            f.raw("spec")
        f.raw("status")  # written by the control plane; ignored on input
        f.finish()
    except ValidationError as err:
        raise err.located(source, index) from None
    assert spec is not None  # finish() raised otherwise
    raw = dict(doc) if isinstance(doc, Mapping) else {}
    return Resource(kind, meta.name, meta.namespace, meta.labels, meta.resource_version, spec,
                    raw, source, index, meta.annotations)


def parse_documents(doc: object, source: str | None = None,
                    index: int | None = None) -> list[Resource]:
    """The resources of one decoded document: itself, or the Ami resources an Istio document
    (meshctl.api.istio) translates to, its errors on the Istio document's field paths."""
    if not istio.is_istio(doc):
        return [parse_document(doc, source, index)]
    assert isinstance(doc, Mapping)
    try:
        translations = istio.translate(doc)
        out: list[Resource] = []
        issues: list[Issue] = []
        for t in translations:
            try:
                r = parse_document(t.doc)
            except ValidationError as err:
                # (an Istio field split into several Ami entries may report one issue twice)
                issues.extend(i for i in t.locate(err).issues if i not in issues)
                continue
            out.append(dataclasses.replace(r, source=source, doc=index, origin=t.origin,
                                           istio_paths=tuple(t.paths)))
        if issues:
            raise ValidationError(issues)
    except ValidationError as err:
        raise err.located(source, index) from None
    return out


def _api_version(kind: str) -> F.Conv[str]:
    versions = FOREIGN_KINDS.get(kind, (API_VERSION,))

    def check(value: object, path: str) -> str:
        if value not in versions:
            fail(path, f"unsupported {value!r}, expected {' or '.join(versions)}"
                       + (f" for kind {kind}" if kind in FOREIGN_KINDS else ""))
        return str(value)

    return check


def _kind(value: object, path: str) -> str:
    if not isinstance(value, str) or value not in KINDS:
        fail(path, f"unknown kind {value!r}, expected one of {', '.join(KINDS)}")
    return value


def _parse_metadata(data: object, path: str) -> _Metadata:
    f = Fields(data, path)
    meta = _Metadata(
        f.required("name", F.string(F.DNS_SUBDOMAIN, "a DNS-1123 name like reviews-v1", 253), ""),
        f.value("namespace", F.string(F.DNS_LABEL, "a DNS-1123 label like default"),
                DEFAULT_NAMESPACE),
        f.value("labels", F.labels, {}),
        f.optional("resourceVersion", F.string()),
        f.value("annotations", annotation_map, {}),
    )
    f.finish()
    return meta


MAX_DEPTH = 100  # levels of nesting a YAML resource may have; real ones have about 10


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader for resources: rejects duplicate keys (PyYAML would silently keep the last),
    anchors and aliases, and nesting deeper than MAX_DEPTH.

    Aliases can expand a 1 KB text into gigabytes ("billion laughs"); Kubernetes limits them
    and resources never need them. Deeper nesting would exhaust Python's recursion limit.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: Any = self.peek_event()  # type: ignore[no-untyped-call]
        anchor = getattr(event, "anchor", None)  # set on an alias and on an anchored node
        if anchor is not None:
            word = "alias '*" if isinstance(event, yaml.AliasEvent) else "anchor '&"
            raise yaml.composer.ComposerError(
                None, None, f"{word}{anchor}' not allowed: resources may not use YAML "
                "anchors or aliases", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    """One YAML document, under the same rules as ``load_documents``; raises yaml.YAMLError."""
    return yaml.load(text, Loader=_StrictLoader)


def load_documents(text: str, source: str, lists: bool = False) -> list[Resource]:
    """Parse every document of a multi-document YAML text; raises with all issues of all docs.

    With ``lists``, a ``kind: List`` document (what ``meshctl get -o json`` prints for a list,
    or kubectl's) stands for its ``items``; their issues are located at ``items[i]``.
    """
    resources: list[Resource] = []
    issues: list[Issue] = []
    loader = _StrictLoader(text)
    index = 0
    try:
        while loader.check_data():  # type: ignore[no-untyped-call]
            index += 1
            doc = loader.get_data()
            if doc is None:
                continue  # an empty document, e.g. after a trailing '---'
            if lists and isinstance(doc, dict) and doc.get("kind") == "List":
                resources.extend(_list_items(doc, source, index, issues))
                continue
            try:
                resources.extend(parse_documents(doc, source, index))
            except ValidationError as err:
                issues.extend(err.issues)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        issues.append(Issue(source, max(index, 1), "",
                            f"invalid YAML: {where}{err.problem or err.context}"))
    except yaml.YAMLError as err:
        issues.append(Issue(source, max(index, 1), "", f"invalid YAML: {err}"))
    finally:
        loader.dispose()
    if issues:
        raise ValidationError(issues)
    return resources


def _list_items(doc: Mapping[str, Any], source: str, index: int,
                issues: list[Issue]) -> list[Resource]:
    """The resources of a ``kind: List`` document; issues go to ``issues``."""
    items = doc.get("items")
    if not isinstance(items, list):
        issues.append(Issue(source, index, "items", "a List needs a list of items"))
        return []
    resources = []
    for i, item in enumerate(items):
        try:
            resources.extend(parse_documents(item, source, index))
        except ValidationError as err:
            issues.extend(dataclasses.replace(
                issue, path=f"items[{i}].{issue.path}" if issue.path else f"items[{i}]")
                for issue in err.issues)
    return resources


def yaml_files(path: Path) -> list[Path]:
    """``path`` itself, or the *.yaml/*.yml files under it, sorted, skipping hidden ones."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise ValidationError([Issue(str(path), None, "", "no such file or directory")])
    return [path / rel for rel in walk_yaml(path) if (path / rel).is_file()]


def load_path(path: str | Path) -> list[Resource]:
    """Load a file or a directory tree of YAML files; raises with all issues of all files."""
    resources: list[Resource] = []
    issues: list[Issue] = []
    for file in yaml_files(Path(path)):
        try:
            resources.extend(load_documents(file.read_text(encoding="utf-8"), str(file)))
        except ValidationError as err:
            issues.extend(err.issues)
        except (OSError, UnicodeDecodeError) as err:
            issues.append(Issue(str(file), None, "", f"cannot read: {err}"))
    if issues:
        raise ValidationError(issues)
    return resources


def validate_set(resources: Iterable[Resource]) -> list[Issue]:
    """Checks across documents: duplicates, conflicting hosts, unknown subsets, one MeshConfig,
    one PeerAuthentication per service and per namespace, one Sidecar per selector."""
    items = list(resources)
    issues: list[Issue] = []

    def add(r: Resource, path: str, message: str) -> None:
        issues.append(Issue(r.source, r.doc, path, message))

    first: dict[tuple[str, ...], Resource] = {}
    # Gateways bound to another (a bound VirtualService's): (namespace, name) -> that one
    bound = {(r.namespace, r.name): r.spec.gateway for r in items
             if isinstance(r.spec, GatewaySpec) and r.spec.gateway is not None}
    for r in items:
        claims: list[tuple[tuple[str, ...], str, str]] = [
            (r.key, "metadata.name", f"duplicate {r.kind} {r.namespace}/{r.name}")]
        if r.kind == "MeshConfig":
            claims.append((("MeshConfig",), "kind", "more than one MeshConfig"))
        if isinstance(r.spec, RouteSpec | DestinationPolicySpec):
            claims.append(_host_claim(r, r.spec.host, first))
        if isinstance(r.spec, ExternalServiceSpec):
            claims.extend(((r.kind, r.namespace, "host", host), f"spec.hosts[{i}]",
                           f"host {host} already has an ExternalService")
                          for i, host in enumerate(r.spec.hosts))
        if isinstance(r.spec, GatewaySpec) and r.spec.listen is not None:
            claims.append((("Gateway", "listen", r.spec.listen), "spec.listen",
                           "listen address already used by a Gateway"))
        if isinstance(r.spec, GatewaySpec) and r.spec.gateway == r.name:
            add(r, "spec.gateway", "a Gateway cannot be bound to itself: name the Gateway "
                                   "whose hosts its rules serve, or remove gateway")
        elif isinstance(r.spec, GatewaySpec) and r.spec.gateway is not None \
                and (target := bound.get((r.namespace, r.spec.gateway))) is not None:
            # (its hosts would be those of a Gateway that serves none of its own: every host)
            add(r, "spec.gateway", f"Gateway {r.spec.gateway} is itself bound to {target}: "
                                   f"bind to a Gateway that serves hosts of its own "
                                   f"({target}?)")
        if isinstance(r.spec, GatewaySpec):
            # A namespace's gateway proxies get the passthrough entries of all its Gateways
            # together: a server name in two of them would be ambiguous.
            claims.extend(((r.kind, r.namespace, "sni", host),
                           f"spec.passthrough[{i}].sniHosts[{j}]",
                           f"server name {host} is already passed through by a Gateway")
                          for i, entry in enumerate(r.spec.passthrough)
                          for j, host in enumerate(entry.sni_hosts))
        if isinstance(r.spec, PeerAuthenticationSpec):
            claims.append(_peer_authentication_claim(r, r.spec))
        if isinstance(r.spec, TelemetrySpec):
            claims.append(_telemetry_claim(r, r.spec))
        if isinstance(r.spec, SidecarSpec):
            claims.append(_sidecar_claim(r, r.spec))
        for claim, path, message in claims:
            if claim in first and (claim == r.key or first[claim].key != r.key):
                add(r, path, f"{message} ({_describe(first[claim])})")
            first.setdefault(claim, r)
    for r in items:
        if isinstance(r.spec, RouteSpec | GatewaySpec) and first.get(r.key) is r:
            issues.extend(_unknown_subsets(r, r.spec, first))
        if isinstance(r.spec, HTTPRouteSpec) and first.get(r.key) is r:
            issues.extend(_httproute_issues(r, r.spec, first))
    issues.extend(_overlapping_selectors(r for r in items if first.get(r.key) is r))
    issues.extend(custom_policy_issues(r for r in items if first.get(r.key) is r))
    return istio_located(issues, items)


def istio_located(issues: Iterable[Issue], resources: Iterable[Resource]) -> list[Issue]:
    """``issues`` with those about a translated Istio document on its own field paths."""
    paths = {(r.source, r.doc): r.istio_paths for r in resources
             if r.istio_paths and r.source is not None and r.doc is not None}
    return istio.relocated(issues, paths) if paths else list(issues)


def _httproute_issues(r: Resource, spec: HTTPRouteSpec,
                      first: Mapping[tuple[str, ...], Resource]) -> list[Issue]:
    """An HTTPRoute and an Ami Route of one namespace for one Service are refused: which one
    applies would be left to chance (Istio leaves an HTTPRoute beside a VirtualService of the
    same host undefined). HTTPRoutes of one Service merge, as the Gateway API says."""
    from meshctl.api.gamma import httproute_issues  # (gamma reads Resource: after it)

    issues = httproute_issues(r)
    for i, parent in enumerate(spec.parents):
        service = f"{parent.name}.{parent.namespace or r.namespace}"
        other = first.get(("Route", r.namespace, "host", service))
        if other is not None:
            issues.append(Issue(r.source, r.doc, f"spec.parentRefs[{i}]",
                                f"service {service} already has a Route in namespace "
                                f"{r.namespace} ({_describe(other)}): route a service with "
                                "Ami Routes or with HTTPRoutes, not both"))
    return issues


def _host_key(host: str, namespace: str) -> str:
    """What a Route or DestinationPolicy host written in ``namespace`` is about: `name.ns` for
    a mesh form (`api` in b, `api.b` and `api.b.svc.cluster.local` are all `api.b`), else the
    host itself (an outside host)."""
    found = service_of(host, namespace)
    return host if found is None else f"{found[0]}.{found[1]}"


def _host_claim(r: Resource, host: str, first: Mapping[tuple[str, ...], Resource]
                ) -> tuple[tuple[str, ...], str, str]:
    """One Route and one DestinationPolicy per service (or outside host) and namespace, however
    its host is spelled: two would leave the one applied to chance."""
    key = (r.kind, r.namespace, "host", _host_key(host, r.namespace))
    other = first.get(key)
    if other is None or getattr(other.spec, "host", host) == host:
        return key, "spec.host", f"host {host} already has a {r.kind}"
    name, ns = key[3].split(".", 1)
    return key, "spec.host", (f"host {host} is service {name} of namespace {ns}, which "
                              f"already has a {r.kind}")


def _peer_authentication_claim(r: Resource, spec: PeerAuthenticationSpec
                               ) -> tuple[tuple[str, ...], str, str]:
    """One PeerAuthentication per service and one namespace-wide one per namespace: two at
    the same level would leave the mode to chance. (Other selectors: _overlapping_selectors.)"""
    if spec.selector is None:
        return (("PeerAuthentication", r.namespace, "selector", ""), "spec.selector",
                f"namespace {r.namespace} already has a namespace-wide PeerAuthentication "
                "(one without selector)")
    path = "spec.selector.service" if spec.match_labels is None else "spec.selector.matchLabels"
    return (("PeerAuthentication", r.namespace, "selector", spec.selector_text or ""), path,
            f"service {spec.service} already has a PeerAuthentication"
            if spec.selector_text == spec.service else
            f"selector {spec.selector_text} already has a PeerAuthentication")


def _overlapping_selectors(items: Iterable[Resource]) -> list[Issue]:
    """Two PeerAuthentications of a namespace whose selectors could both match one workload
    (`app=reviews` and `app=reviews,version=v3`): Istio would apply the older one, unseen;
    the later one here is refused, naming the first. (Equal selectors: the claim above.)"""
    issues: list[Issue] = []
    seen: dict[str, list[tuple[Resource, dict[str, str]]]] = {}
    for r in items:
        if not isinstance(r.spec, PeerAuthenticationSpec) or r.spec.selector is None:
            continue
        mine = r.spec.selector
        for other, theirs in seen.setdefault(r.namespace, []):
            if theirs != mine and overlap(mine, theirs):
                path = ("spec.selector.service" if r.spec.match_labels is None
                        else "spec.selector.matchLabels")
                issues.append(Issue(
                    r.source, r.doc, path,
                    f"{_peer_selector(r)} can select the same sidecars as "
                    f"{_peer_selector(other)} ({_describe(other)}): give them selectors "
                    "that differ in a label's value (Istio would apply the older one)"))
                break
        else:
            seen[r.namespace].append((r, mine))
    return issues


def _peer_selector(r: Resource) -> str:
    """`service NAME` for a selector of the service alone, else `selector k=v,...`."""
    assert isinstance(r.spec, PeerAuthenticationSpec)
    text = r.spec.selector_text
    return f"service {text}" if text == r.spec.service else f"selector {text}"


def _telemetry_claim(r: Resource, spec: TelemetrySpec) -> tuple[tuple[str, ...], str, str]:
    """One namespace-wide Telemetry per namespace, and one per label selector: two at the same
    level would leave the settings to chance."""
    if spec.match_labels is None:
        return (("Telemetry", r.namespace, "selector", ""), "spec.selector",
                f"namespace {r.namespace} already has a namespace-wide Telemetry "
                "(one without selector)")
    labels = ",".join(f"{k}={v}" for k, v in sorted(spec.match_labels.items()))
    return (("Telemetry", r.namespace, "selector", labels), "spec.selector.matchLabels",
            f"selector {{{labels}}} already has a Telemetry")


def _sidecar_claim(r: Resource, spec: SidecarSpec) -> tuple[tuple[str, ...], str, str]:
    """One namespace-wide Sidecar per namespace, and one per selector: two would leave a
    sidecar's scope to chance (Istio leaves it undefined)."""
    if spec.labels is None:
        return (("Sidecar", r.namespace, "selector"), "spec",
                f"namespace {r.namespace} already has a namespace-wide Sidecar "
                "(one without workloadSelector)")
    text = ",".join(f"{k}={v}" for k, v in spec.labels)
    return (("Sidecar", r.namespace, "selector", text), "spec.workloadSelector.labels",
            f"a Sidecar of namespace {r.namespace} already selects {text}")


def _unknown_subsets(route: Resource, spec: RouteSpec | GatewaySpec,
                     first: Mapping[tuple[str, ...], Resource]) -> list[Issue]:
    """Backends and mirrors naming a subset that no DestinationPolicy of that host defines
    (of a Route's rules, or of a Gateway's Route rules)."""
    found: list[Issue] = []
    default = spec.host if isinstance(spec, RouteSpec) else ""
    rules = list(enumerate(spec.rules)) if isinstance(spec, RouteSpec) else [
        (i, r.rule) for i, r in enumerate(spec.rules) if r.rule is not None]
    for i, rule in rules:
        targets = [(f"spec.rules[{i}].backends[{j}].subset", b.service, b.subset)
                   for j, b in enumerate(rule.backends)]
        if rule.mirror is not None:
            targets.append((f"spec.rules[{i}].mirror.subset", rule.mirror.service,
                            rule.mirror.subset))
        for path, service, subset in targets:
            host = service or default
            policy = _policy_of(host, route.namespace, first)
            known = ([s.name for s in policy.spec.subsets]
                     if policy and isinstance(policy.spec, DestinationPolicySpec) else [])
            if subset is not None and subset not in known:
                listed = ", ".join(sorted(known)) or "none, no DestinationPolicy defines any"
                found.append(Issue(route.source, route.doc, path,
                                   f"unknown subset '{subset}' for host {host} (known: {listed})"))
    return found


def _policy_of(host: str, namespace: str, first: Mapping[tuple[str, ...], Resource]
               ) -> Resource | None:
    """The DestinationPolicy whose subsets a Route of ``namespace`` naming ``host`` gets: its
    own namespace's, else that of the service's namespace (the lookup path of snapshots)."""
    key = _host_key(host, namespace)
    found = service_of(host, namespace)
    for ns in (namespace,) if found is None else (namespace, found[1]):
        policy = first.get(("DestinationPolicy", ns, "host", key))
        if policy is not None:
            return policy
    return None


def _describe(r: Resource) -> str:
    """Where a resource was first defined, for 'duplicate' messages."""
    name = f"{r.kind} {r.namespace}/{r.name}"
    # (one translated from Istio YAML: the user wrote that document, not this kind)
    origin = r.origin or r.annotations.get("ami.mesh/translated-from")
    if origin:
        name += f", translated from {origin}"
    if r.source is None:
        return f"see {name}"
    return f"see {name} in {r.source}" + (f" doc {r.doc}" if r.doc is not None else "")

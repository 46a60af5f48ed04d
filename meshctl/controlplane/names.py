"""What a service name means from a namespace, and how each proxy's snapshot keys services.

A proxy's snapshot keys a service by its bare name (`api`) when that name is unambiguous from
the proxy's namespace: the service is in that namespace, or no other namespace has a service
of that name (so meshes without clashing names keep the snapshots, and the short names, they
always had). Otherwise it is keyed `api.b` (name.namespace), the form the proxy's Host routing
also takes from `api.b.svc.cluster.local`. Resources are resolved in their own namespace the
same way: a Route for `api` in namespace `b` is about `b`'s `api` (docs/traffic.md).
"""

from __future__ import annotations

from collections.abc import Iterable

from meshctl.api.hostnames import mesh_form, service_of


class ServiceNames:
    """The namespaces each service name lives in."""

    def __init__(self, services: Iterable[tuple[str, str]]) -> None:
        self._homes: dict[str, set[str]] = {}
        for name, namespace in services:
            self._homes.setdefault(name, set()).add(namespace)

    def with_service(self, name: str, namespace: str) -> ServiceNames:
        """These names and one more service (one declared but with no sidecar yet)."""
        return ServiceNames([*((n, ns) for n, homes in self._homes.items() for ns in homes),
                             (name, namespace)])

    def key(self, name: str, namespace: str, viewer: str) -> str:
        """The key of service ``name`` of ``namespace`` in the snapshots of ``viewer``'s
        proxies: the bare name when it means that service there, else `name.namespace`."""
        homes = self._homes.get(name, ())
        if namespace == viewer or (viewer not in homes and len(homes) == 1):
            return name
        return f"{name}.{namespace}"

    def metrics_name(self, name: str, namespace: str) -> str:
        """The service's `destination_service` label, the same on every sidecar (caller's and
        callee's alike): the bare name while one namespace has it, else `name.namespace`."""
        return name if len(self._homes.get(name, ())) <= 1 else f"{name}.{namespace}"

    def resolve(self, host: str, namespace: str) -> tuple[str, str] | None:
        """(name, namespace) of the mesh service ``host`` means when written in ``namespace``:
        a bare name is that namespace's service, else the only one of that name; `name.ns`,
        `name.ns.svc` and `name.ns.svc.<domain>` are namespace `ns`'s (meshctl.api.hostnames).
        None: no mesh service (an outside host, or `name.ns` where ns has no `name`), or a
        bare name several other namespaces have."""
        form = mesh_form(host)
        if form is None:
            return None
        name, ns = form
        homes = self._homes.get(name)
        if not homes:
            return None
        if ns is None:
            if namespace in homes:
                return name, namespace
            return (name, next(iter(homes))) if len(homes) == 1 else None
        return (name, ns) if ns in homes else None

    def written_as(self, host: str, namespace: str) -> bool:
        """Whether ``host`` (in ``namespace``) means the service its form names, not another
        namespace's that a bare name falls back to when its own namespace has none."""
        found = self.resolve(host, namespace)
        return found is not None and found == service_of(host, namespace)

    def ambiguous(self, host: str, namespace: str) -> bool:
        """Whether ``host`` is a bare name that means no service from ``namespace`` only because
        several other namespaces have one (a Route with it is about none of them)."""
        form = mesh_form(host)
        return (form is not None and form[1] is None and form[0] in self._homes
                and self.resolve(host, namespace) is None)

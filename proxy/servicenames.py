"""How the outbound side reads a requested host as a mesh service: the snapshot's keys.

A snapshot keys a service by its bare name (`api`) when that name means it from the proxy's
namespace, else `name.namespace` (meshctl.controlplane.names). An exact key costs one dict
lookup in the caller; this module is for the misses only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from meshctl.api.hostnames import mesh_form

T = TypeVar("T")


def lookup_service_name(table: Mapping[str, T], host: str,
                        namespace_of: Callable[[str], str | None],
                        first_label: bool = True) -> T | None:
    """The entry of a host that is not a key of ``table`` itself:

    - `name.ns`, `name.ns.svc`, `name.ns.svc.<domain>`: namespace ns's `name` (the entry
      `name.ns`, or `name` when ``namespace_of(name)`` is ns), else None: as in Kubernetes,
      `api.c` from a pod is `api` of namespace c, and none of another namespace;
    - a longer name of no mesh form (`api.example.com`): with ``first_label``, what its first
      label would reach as a bare name (documented behaviour when no ExternalService
      declares the name), else None;
    - a bare name: None (its own key was looked up already)."""
    form = mesh_form(host)
    if form is None:
        return table.get(host.partition(".")[0]) if first_label else None
    name, namespace = form
    if namespace is None:
        return None
    found = table.get(f"{name}.{namespace}")
    if found is None and namespace_of(name) == namespace:
        found = table.get(name)
    return found


def unresolved_names(namespaces: Mapping[str, str]) -> frozenset[str]:
    """Bare names that mean no service from this proxy's namespace although mesh services
    have them: several other namespaces do (keyed only `name.ns`), none is the own one.
    ``namespaces``: each snapshot service key and its namespace."""
    return frozenset(key.partition(".")[0] for key in namespaces
                     if "." in key and key.partition(".")[0] not in namespaces)

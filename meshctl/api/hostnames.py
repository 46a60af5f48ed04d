"""The forms of a mesh service's name (Kubernetes'), read from a host's text alone.

`api` is the reader's namespace's service; `api.b`, `api.b.svc` and `api.b.svc.<domain>` are
namespace b's (a two-label name is always read as `name.namespace`, as a pod's DNS search path
does). Any other name (`api.example.com`) is no mesh form. Used wherever a name must be
compared without the registry: validation (two Routes about one service however spelled), the
control plane's resolution (meshctl.controlplane.names) and the proxy's lookups (proxy.headers).
"""

from __future__ import annotations


def mesh_form(host: str) -> tuple[str, str | None] | None:
    """(name, namespace) of a host in a mesh form, the namespace None for a bare name (the
    reader's); None for a name of no mesh form."""
    name, dot, rest = host.partition(".")
    if not dot:
        return name, None
    namespace, _, suffix = rest.partition(".")
    if not suffix or suffix == "svc" or suffix.startswith("svc."):
        return name, namespace
    return None


def service_of(host: str, namespace: str) -> tuple[str, str] | None:
    """(name, namespace) of the service ``host`` names when written in ``namespace``, by its
    form alone; None for a name of no mesh form (an outside host)."""
    form = mesh_form(host)
    if form is None:
        return None
    return form[0], form[1] or namespace

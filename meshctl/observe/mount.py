"""One call for ``meshctl serve``: the observer and every observability route it mounts."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from meshctl.observe.api import Observer, observe_routes
from meshctl.observe.cpmetrics import metrics_routes


def observability(registry: Any, reconciler: Any, *, token: str, interval: float = 2.0
                  ) -> tuple[Observer, list[web.AbstractRouteDef]]:
    """The observer (run ``observer.run()`` in the serve TaskGroup) and the routes to mount:
    stat/edges/top/tap/check, the dashboard, and the control plane's own ``/metrics``."""
    from meshctl.controlplane.proxystatus import proxies_json
    from meshctl.observe.checks import jwks_checks

    def extra_checks() -> list[Any]:
        jwks = getattr(reconciler, "jwks", None)
        return jwks_checks(jwks.status()) if jwks is not None else []

    observer = Observer(lambda: proxies_json(registry, reconciler), interval=interval,
                        admin_tokens=lambda: {p.name: p.admin_token for p in registry.proxies()},
                        extra_checks=extra_checks)
    routes: list[web.AbstractRouteDef] = [*observe_routes(observer, token=token),
                                          *metrics_routes(reconciler)]
    return observer, routes

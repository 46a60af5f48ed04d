"""One call for ``meshctl serve``: the observer and every observability route it mounts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aiohttp import web

from meshctl.observe.admincall import AdminCaller
from meshctl.observe.api import Observer, observe_routes
from meshctl.observe.cpmetrics import metrics_routes

if TYPE_CHECKING:
    from meshctl.controlplane.admintls import AdminTls


def observability(registry: Any, reconciler: Any, *, token: str, interval: float = 2.0,
                  admin_tls: AdminTls | None = None, api: tuple[str, bool] | None = None
                  ) -> tuple[Observer, list[web.AbstractRouteDef]]:
    """The observer (run ``observer.run()`` in the serve TaskGroup) and the routes to mount:
    stat/edges/top/tap/check, the dashboard, and the control plane's own ``/metrics``.
    ``admin_tls``: the control plane's client certificate for sidecars' admin listeners;
    ``api``: where the API listens and whether over TLS, for `meshctl check`."""
    from meshctl.controlplane.proxystatus import proxies_json
    from meshctl.observe.checks import api_transport_check, jwks_checks

    def extra_checks() -> list[Any]:
        jwks = getattr(reconciler, "jwks", None)
        groups = jwks_checks(jwks.status()) if jwks is not None else []
        return [*groups, api_transport_check(*api)] if api is not None else groups

    def admin_token(name: str) -> str:
        info = registry.get(name)
        return info.admin_token if info is not None else ""

    observer = Observer(lambda: proxies_json(registry, reconciler), interval=interval,
                        admin=AdminCaller(admin_tls, admin_token), extra_checks=extra_checks)
    routes: list[web.AbstractRouteDef] = [*observe_routes(observer, token=token),
                                          *metrics_routes(reconciler)]
    return observer, routes

"""A provider's `clearRouteCache` (Istio's envoyExtAuthzHttp and envoyExtAuthzGrpc field,
Envoy's ext_authz `clear_route_cache`) through real processes: `meshctl serve`, three gateways
with one Gateway resource (a rule for `x-tenant: beta` to beta, the rest to alpha), apps
alpha and beta behind sidecars, and real providers (a grpcio Check server and an aiohttp HTTP
one) that allow every request and set `x-tenant: beta` on it.

With clearRouteCache the gateway routes again with the provider's header: the request goes to
beta. Without it (the default, as Envoy's route cache) the route chosen before the check holds:
alpha, with the header.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from aiohttp import web

from proxy.authzproto import core_pb2
from proxy.authzproto.external_auth_pb2 import CheckRequest, CheckResponse
from tests import meshbuilder
from tests.grpcapp import serving_in_thread
from tests.helpers_mesh import http_get, wait_for
from tests.proxyharness import Backends
from tests.resources import document, documents, mesh_config
from tests.test_extauthz_grpc import Authorizer

pytestmark = pytest.mark.timeout(240)


class Tenant(Authorizer):
    """Allows every request, setting `x-tenant: beta` on it."""

    async def Check(self, request: CheckRequest,
                    context: grpc.aio.ServicerContext) -> CheckResponse:
        answer = CheckResponse()
        answer.ok_response.headers.append(core_pb2.HeaderValueOption(
            header=core_pb2.HeaderValue(key="x-tenant", value="beta")))
        return answer


def _provider(name: str, kind: str, port: int, **fields: Any) -> dict[str, Any]:
    return {"name": name, kind: {"service": f"{name}.partner.test", "port": port, **fields}}


def _external(name: str, port: int, protocol: str) -> str:
    return document("ExternalService", name, {
        "hosts": [f"{name}.partner.test"], "ports": [{"number": port, "protocol": protocol}],
        "endpoints": [{"address": "127.0.0.1"}]})


def _custom(service: str, provider: str) -> str:
    return document("AuthorizationPolicy", f"{service}-ext", {
        "selector": {"service": service}, "action": "CUSTOM", "provider": {"name": provider},
        "rules": [{}]})


class RerouteMesh(meshbuilder.Mesh):
    def build(self) -> RerouteMesh:
        tenant = Tenant()
        serving = serving_in_thread(tenant)  # type: ignore[arg-type]
        serving.__enter__()
        self.defer(lambda: serving.__exit__(None, None, None))
        self.hub = Backends()
        self.defer(self.hub.close)
        http_authz = self.hub.aiohttp(self._http_authz())
        self.control_plane(documents(
            mesh_config("PERMISSIVE", extensionProviders=[
                _provider("grpc-clear", "envoyExtAuthzGrpc", tenant.port, clearRouteCache=True),
                _provider("grpc-keep", "envoyExtAuthzGrpc", tenant.port),
                _provider("http-clear", "envoyExtAuthzHttp", http_authz,
                          headersToUpstreamOnAllow=["x-tenant"], clearRouteCache=True)]),
            _external("grpc-clear", tenant.port, "GRPC"),
            _external("grpc-keep", tenant.port, "GRPC"),
            _external("http-clear", http_authz, "HTTP"),
            document("Gateway", "edge", {"listen": "127.0.0.1:1", "rules": [
                {"match": [{"headers": {"x-tenant": {"exact": "beta"}}}],
                 "destination": "beta"},
                {"destination": "alpha"}]}),
            _custom("gw-grpc-clear", "grpc-clear"), _custom("gw-grpc-keep", "grpc-keep"),
            _custom("gw-http-clear", "http-clear")), warmup=0.0)
        self.service("alpha", "v1")
        self.service("beta", "v1")
        self.gateways = {name: self.gateway(name, service=name)
                         for name in ("gw-grpc-clear", "gw-grpc-keep", "gw-http-clear")}
        self.wait_synced()
        for name in self.gateways:
            wait_for(lambda n=name: self.through(n)[0] == 200, 20,  # type: ignore[misc]
                     f"{name} routes")
        return self

    @staticmethod
    def _http_authz() -> web.Application:
        async def check(request: web.Request) -> web.Response:
            return web.Response(text="ok", headers={"x-tenant": "beta"})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", check)
        return app

    def through(self, gateway: str) -> tuple[int, bytes]:
        """A client's GET through ``gateway``: status and body (the app's name)."""
        return http_get(f"http://{self.gateways[gateway].info['gateway']}/",
                        {"Host": "shop.example"})


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RerouteMesh]:
    with RerouteMesh(tmp_path_factory.mktemp("extauthz-reroute")) as built:
        yield built.build()


@pytest.mark.parametrize("gateway", ["gw-grpc-clear", "gw-http-clear"])
def test_clear_route_cache_routes_again_with_the_providers_headers(
        mesh: RerouteMesh, gateway: str) -> None:
    status, body = mesh.through(gateway)
    assert (status, body) == (200, b"beta-v1"), body


def test_without_it_the_route_chosen_before_the_check_holds(mesh: RerouteMesh) -> None:
    status, body = mesh.through("gw-grpc-keep")
    assert (status, body) == (200, b"alpha-v1"), body

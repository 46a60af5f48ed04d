"""The productpage service: the Bookinfo web page and JSON API over details and reviews."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from sample_apps.bookinfo.common import ListenAddress, new_app, run
from sample_apps.bookinfo.forwarding import forwarded_headers
from sample_apps.bookinfo.page import render_index, render_productpage
from sample_apps.bookinfo.products import PRODUCTS, Outcome, ProductService, Upstreams
from sample_apps.bookinfo.session import COOKIE_NAME, SessionSigner
from sample_apps.bookinfo.upstream import UpstreamClient, proxy_from_env, upstream_context


@dataclass(frozen=True, slots=True)
class ProductPageSettings:
    """Upstreams, the sidecar proxy and the session-signing secret."""

    upstreams: Upstreams = field(default_factory=Upstreams)
    proxy: str | None = None
    session_secret: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> ProductPageSettings:
        secret = environ.get("SESSION_SECRET")
        return cls(
            upstreams=Upstreams.from_env(environ),
            proxy=proxy_from_env(environ),
            # A random secret logs everyone out on restart; set SESSION_SECRET for replicas.
            session_secret=secret.encode() if secret else secrets.token_bytes(32),
        )


SETTINGS = web.AppKey("settings", ProductPageSettings)
CLIENT = web.AppKey("client", UpstreamClient)
SIGNER = web.AppKey("signer", SessionSigner)


def _user(request: web.Request) -> str | None:
    return request.app[SIGNER].load(request.cookies.get(COOKIE_NAME))


def _context(request: web.Request) -> tuple[ProductService, dict[str, str]]:
    """The upstream caller and the headers every outbound call of this request carries."""
    service = ProductService(request.app[CLIENT], request.app[SETTINGS].upstreams)
    return service, forwarded_headers(request.headers, _user(request))


def _json(outcome: Outcome) -> web.Response:
    return web.json_response(outcome.body, status=outcome.status)


async def index(_: web.Request) -> web.Response:
    return web.Response(text=render_index(), content_type="text/html")


async def product_page(request: web.Request) -> web.Response:
    service, headers = _context(request)
    product = PRODUCTS[0]
    product_id = str(product["id"])
    details = await service.details(product_id, headers)
    reviews = await service.reviews(product_id, headers)
    html = render_productpage(product, details, reviews, _user(request))
    return web.Response(text=html, content_type="text/html")


async def api_products(_: web.Request) -> web.Response:
    return web.json_response(list(PRODUCTS))


async def api_product(request: web.Request) -> web.Response:
    service, headers = _context(request)
    return _json(await service.details(request.match_info["id"], headers))


async def api_reviews(request: web.Request) -> web.Response:
    service, headers = _context(request)
    return _json(await service.reviews(request.match_info["id"], headers))


async def api_ratings(request: web.Request) -> web.Response:
    service, headers = _context(request)
    return _json(await service.ratings(request.match_info["id"], headers))


def _back_to_page() -> web.Response:
    return web.Response(status=302, headers={"Location": "/productpage"})


MAX_USERNAME = 64


async def login(request: web.Request) -> web.Response:
    form = await request.post()
    username = str(form.get("username", "")).strip()
    # The name becomes the end-user header of every call: it must be a valid header value.
    if len(username) > MAX_USERNAME or not username.isprintable():
        return web.Response(status=400, text=f"user name: printable characters only, at most "
                                             f"{MAX_USERNAME}\n")
    response = _back_to_page()
    if username:
        cookie = request.app[SIGNER].dump(username)
        response.set_cookie(COOKIE_NAME, cookie, httponly=True, samesite="Lax", path="/")
    return response


async def logout(_: web.Request) -> web.Response:
    response = _back_to_page()
    response.del_cookie(COOKIE_NAME, path="/")
    return response


def create_app(settings: ProductPageSettings) -> web.Application:
    app = new_app("productpage")
    app[SETTINGS] = settings
    app[SIGNER] = SessionSigner(settings.session_secret)
    app.cleanup_ctx.append(upstream_context(CLIENT, settings.proxy))
    app.router.add_get("/", index)
    app.router.add_get("/productpage", product_page)
    app.router.add_get("/api/v1/products", api_products)
    app.router.add_get("/api/v1/products/{id}", api_product)
    app.router.add_get("/api/v1/products/{id}/reviews", api_reviews)
    app.router.add_get("/api/v1/products/{id}/ratings", api_ratings)
    app.router.add_post("/login", login)
    app.router.add_get("/logout", logout)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    app = create_app(ProductPageSettings.from_env(os.environ))
    run(app, "productpage", ListenAddress.from_args("productpage", argv, os.environ))


if __name__ == "__main__":
    main()

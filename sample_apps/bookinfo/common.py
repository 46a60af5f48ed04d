"""Shared runner pieces for the Bookinfo apps: listen address, access log, health route."""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """Where an app listens; loopback by default because its sidecar fronts it."""

    host: str
    port: int

    @classmethod
    def from_args(
        cls, prog: str, argv: Sequence[str] | None, environ: Mapping[str, str]
    ) -> ListenAddress:
        """Read `--host`/`--port`, falling back to the `HOST`/`PORT` environment variables."""
        parser = argparse.ArgumentParser(prog=prog, description=f"Bookinfo {prog} service")
        parser.add_argument("--host", default=environ.get("HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(environ.get("PORT", "9080")))
        args = parser.parse_args(argv)
        return cls(host=args.host, port=args.port)


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Print one line per request so a scenario (e.g. mirror) can be checked from the log."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        elapsed_ms = (time.monotonic() - started) * 1000
        print(
            f"{request.method} {request.path_qs} {status} host={request.host} {elapsed_ms:.1f}ms",
            flush=True,
        )


def new_app(service: str) -> web.Application:
    """An application with the access log and Istio's `GET /health` answer for `service`."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": f"{service.capitalize()} is healthy"})

    app = web.Application(middlewares=[access_log])
    app.router.add_get("/health", health)
    return app


def run(app: web.Application, service: str, address: ListenAddress) -> None:
    """Serve `app` until SIGINT/SIGTERM; aiohttp's own access log is replaced by ours."""

    def announce(_: str) -> None:
        print(f"{service} listening on http://{address.host}:{address.port}", flush=True)

    web.run_app(app, host=address.host, port=address.port, access_log=None, print=announce)

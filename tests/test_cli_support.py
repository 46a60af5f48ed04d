"""Shared pieces of the meshctl CLI tests: a real API on loopback, fakes of the status
endpoints other engineers are building, running ``meshctl.cli.main`` and golden files."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aiohttp import web

from meshctl.cli import main
from meshctl.controlplane.httpapi import create_api_app
from meshctl.controlplane.store import Store
from tests.resources import destination_policy, header_rule, route

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE_GOLDEN = os.environ.get("AMI_UPDATE_GOLDEN") == "1"  # regenerate instead of compare
TOKEN = "test-token"
DEADLINE = 10.0


@pytest.fixture(autouse=True)
def token(monkeypatch: pytest.MonkeyPatch) -> None:
    """AMI_TOKEN for the in-process meshctl; autouse in every module that imports it."""
    monkeypatch.setenv("AMI_TOKEN", TOKEN)


@dataclass(frozen=True, slots=True)
class ControlPlane:
    url: str
    store: Store

    async def meshctl(self, *argv: str, deadline: float = DEADLINE) -> tuple[int, str, str]:
        """Run ``meshctl --control-plane URL argv...`` in a thread: (exit code, stdout, stderr)."""
        return await run_meshctl("--control-plane", self.url, *argv, deadline=deadline)


async def run_meshctl(*argv: str, deadline: float = DEADLINE) -> tuple[int, str, str]:
    """``meshctl.cli.main(argv)`` off the event loop (the CLI blocks on HTTP to this loop)."""
    def call() -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        return code, out.getvalue(), err.getvalue()

    async with asyncio.timeout(deadline):
        return await asyncio.to_thread(call)


def run_group(group: ModuleType, *argv: str, **attrs: object) -> int:
    """Parse ``argv`` as ``meshctl ...`` with only ``group``'s commands registered (a module of
    ``meshctl.commands``), set ``attrs`` on the arguments, and run the chosen command."""
    parser = argparse.ArgumentParser(prog="meshctl")
    group.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    for name, value in attrs.items():
        setattr(args, name, value)
    status: int = args.func(args)
    return status


@contextlib.asynccontextmanager
async def control_plane(store: Store, extra_routes: Iterable[web.AbstractRouteDef] = ()
                        ) -> AsyncIterator[ControlPlane]:
    """The real HTTP API over ``store`` on a free 127.0.0.1 port, write token ``TOKEN``."""
    runner = web.AppRunner(create_api_app(store, token=TOKEN, extra_routes=list(extra_routes)))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield ControlPlane(f"http://{host}:{port}", store)
    finally:
        await runner.cleanup()
        await store.close()


@dataclass(slots=True)
class FakeSync:
    """``GET /api/v1/sync`` as its contract says; records each query it was asked."""

    lagging: list[dict[str, Any]] = field(default_factory=list)  # non-empty: answer 504
    proxies: int = 7
    queries: list[dict[str, str]] = field(default_factory=list)

    def route(self) -> web.RouteDef:
        return web.get("/api/v1/sync", self.handle)

    async def handle(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if self.lagging:
            return web.json_response({"synced": False, "reason": "Timeout", "elapsed_ms": 2000.0,
                                      "error": f"{len(self.lagging)} proxies have not ACKed",
                                      "lagging": self.lagging}, status=504)
        return web.json_response({"synced": True, "proxies": self.proxies, "elapsed_ms": 43.2})


def fake_proxies(store_version: int, proxies: list[dict[str, Any]]) -> web.RouteDef:
    """``GET /api/v1/proxies`` answering a fixed list, shaped like its contract."""
    async def handle(request: web.Request) -> web.Response:
        return web.json_response({"storeVersion": store_version, "proxies": proxies})

    return web.get("/api/v1/proxies", handle)


def check_golden(name: str, actual: str) -> None:
    """Compare with ``tests/golden/<name>``; AMI_UPDATE_GOLDEN=1 rewrites the file instead."""
    path = GOLDEN / name
    if UPDATE_GOLDEN:
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual)
    assert actual == path.read_text(), f"differs from {path} (AMI_UPDATE_GOLDEN=1 to rewrite)"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


POLICY = destination_policy("reviews", ("v1", "v2", "v3"))
JASON = header_rule("v2", name="jason")


def reviews_route(v1: int, v2: int, host: str = "reviews") -> str:
    """The Route `reviews`: jason to v2, the rest to v1 and v2 by weight."""
    return route(host, {"v1": v1, "v2": v2}, rules=[JASON], name="reviews")

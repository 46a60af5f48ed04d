"""Fixtures many test modules share: an HTTP client session, a backend hub and its echo app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from tests.proxyharness import Backends, echo_app


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session of the test's own, closed with it."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    """The module's in-process backends (their event loop thread), closed after its last test."""
    hub = Backends()
    yield hub
    hub.close()


@pytest.fixture(scope="module")
def echo(backends: Backends) -> int:
    """The port of an `echo_app` on the module's `backends`, for the module's tests."""
    return backends.aiohttp(echo_app())

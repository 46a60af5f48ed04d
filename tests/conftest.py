"""Fixtures many test modules share: an HTTP client session, a backend hub and its echo app."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from hypothesis import settings

from tests.proxyharness import Backends, echo_app

# Hypothesis fails an example that runs longer than 200 ms by default: a timed assertion,
# which a loaded CI machine trips (seen on test_policy_balancer). Properties, not timings.
settings.register_profile("ami", deadline=None)
settings.load_profile("ami")


def pytest_configure(config: pytest.Config) -> None:
    """Let the suite's children be interrupted as from a terminal.

    A non-interactive shell starts a background job (`make test &`, a CI script's `cmd &`)
    with SIGINT ignored, and every child inherits that: the tests that press Ctrl-C on a
    `meshctl` process would wait for an exit that never comes. A handled signal is reset to
    the default on exec, so the children start with Python's usual Ctrl-C behaviour.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


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

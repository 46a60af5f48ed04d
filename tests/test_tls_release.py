"""A closed mTLS connection frees its TLS state at once, without waiting for the cyclic GC.

Each TLS connection holds ~300 KiB outside Python's view (uvloop's 256 KiB read buffer, the
OpenSSL session). The proxy's protocols form a cycle with their httptools parsers, so if they
kept their transport after the connection ended, that memory would wait for a full garbage
collection - rare for long-lived objects - and a sidecar whose pool turns connections over grew
for minutes (`make soak`). Here the cyclic GC is off, so only reference counting can free it.
"""

from __future__ import annotations

import asyncio
import gc
import ssl
import time
import weakref
from collections.abc import Callable, Iterator

import pytest
import uvloop

from meshctl.ca import CertificateAuthority, init_ca
from proxy.config import Address
from proxy.downstream import TlsDownstreamProtocol
from proxy.listener import Limits, Listener
from proxy.metrics import RequestStats
from proxy.pools import EndpointPool
from proxy.routing import Router
from proxy.tls import TlsContexts
from tests.test_mtls_static import TD, mint


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> tuple[TlsContexts, TlsContexts]:
    """mTLS contexts for a server (`reviews`) and a client (`productpage`) of one CA."""
    tmp = tmp_path_factory.mktemp("tls-release")
    init_ca(tmp / "ca", TD)
    ca = CertificateAuthority(tmp / "ca")
    return TlsContexts(mint(ca, "reviews")), TlsContexts(mint(ca, "productpage"))


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    """Only reference counting frees objects while the test runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _freed(ref: weakref.ref[ssl.SSLObject], deadline_s: float = 5.0) -> bool:
    end = time.monotonic() + deadline_s
    while ref() is not None and time.monotonic() < end:
        await asyncio.sleep(0.01)  # lets the loop run the close callbacks
    return ref() is None


@pytest.mark.parametrize("new_loop", [uvloop.new_event_loop, asyncio.new_event_loop],
                         ids=["uvloop", "asyncio"])
def test_closed_connections_free_their_tls_state_by_refcount(
        contexts: tuple[TlsContexts, TlsContexts], no_cyclic_gc: None,
        new_loop: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """Server side (a sidecar's inbound) and client side (its pool): both SSL objects go."""
    loop = new_loop()
    try:
        loop.run_until_complete(_open_and_close_one_connection(*contexts))
    finally:
        loop.close()


async def _open_and_close_one_connection(server_tls: TlsContexts,
                                         client_tls: TlsContexts) -> None:
    loop = asyncio.get_running_loop()
    listener = Listener("inbound", loop, Router({}), RequestStats(), Limits(), tls=True)
    server = await loop.create_server(lambda: TlsDownstreamProtocol(listener), "127.0.0.1", 0,
                                      ssl=server_tls.listener)
    try:
        port = server.sockets[0].getsockname()[1]
        pool = EndpointPool(loop, Address("127.0.0.1", port))
        pool.tls = client_tls
        conn = await pool.connect()
        assert conn.transport is not None
        client_ssl = weakref.ref(conn.transport.get_extra_info("ssl_object"))
        end = time.monotonic() + 5.0
        while not listener.connections and time.monotonic() < end:
            await asyncio.sleep(0.01)
        (accepted,) = listener.connections
        assert accepted.transport is not None and accepted.peer_identity is not None
        server_ssl = weakref.ref(accepted.transport.get_extra_info("ssl_object"))
        del accepted
        conn.close()
        del conn
        assert await _freed(client_ssl), "the pool's closed connection kept its TLS state"
        assert await _freed(server_ssl), "the listener's closed connection kept its TLS state"
        assert not listener.connections
    finally:
        server.close()
        await server.wait_closed()

"""Tracing: sampling decisions, header propagation, and one trace across two proxied hops."""

from __future__ import annotations

import asyncio
import random
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from proxy.tracing import Tracer, incoming_context, parse_traceparent
from sample_apps.bookinfo.forwarding import forwarded_headers
from tests.observe_harness import sidecar
from tests.proxyharness import Backends, ProxyProcess, echo_app

PARENT = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def fake_exchange(headers: list[tuple[bytes, bytes]]) -> Any:
    return SimpleNamespace(headers=headers, method=b"GET", path="/p", authority="reviews",
                           downstream=SimpleNamespace(listener=SimpleNamespace(kind="outbound")),
                           trace=None, head_tail=[])


@pytest.fixture
def memory() -> Iterator[tuple[Tracer, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield Tracer(provider.get_tracer("t"), service="productpage", rng=random.Random(1)), exporter
    provider.shutdown()


def test_traceparent_and_b3_parsing() -> None:
    """W3C traceparent wins; B3 headers are the fallback; junk is ignored."""
    assert parse_traceparent(PARENT) == (0x0AF7651916CD43DD8448EB211C80319C,
                                         0xB7AD6B7169203331, True)
    assert parse_traceparent(b"00-zz-11-01") is None
    b3 = [(b"X-B3-TraceId", b"463ac35c9f6413ad48485a3953bb6124"),
          (b"X-B3-SpanId", b"a2fb4a1d1a96d312"), (b"X-B3-Sampled", b"1")]
    assert incoming_context(b3) == ((0x463AC35C9F6413AD48485A3953BB6124, 0xA2FB4A1D1A96D312),
                                    True)
    assert incoming_context([(b"host", b"x")]) == (None, None)


def test_unsampled_request_is_left_alone(memory: tuple[Tracer, InMemorySpanExporter]) -> None:
    """At sampling 0 a request without trace headers gets no spans, only the decision for the
    next hops (``x-b3-sampled: 0``)."""
    tracer, exporter = memory
    ex = fake_exchange([(b"host", b"reviews")])
    tracer.begin(ex)
    assert ex.trace is None and ex.headers == [(b"host", b"reviews")]
    assert ex.head_tail == [b"x-b3-sampled: 0\r\n"]
    ex = fake_exchange([(b"traceparent", PARENT[:-2] + b"00")])  # caller decided: not sampled
    tracer.sampling = 1.0
    tracer.begin(ex)
    assert ex.trace is None and exporter.get_finished_spans() == ()


def test_sampled_parent_is_continued(memory: tuple[Tracer, InMemorySpanExporter]) -> None:
    """An incoming sampled traceparent makes a server span (its child) and a client span whose
    id goes out in traceparent and B3 headers."""
    tracer, exporter = memory
    ex = fake_exchange([(b"host", b"reviews"), (b"traceparent", PARENT)])
    tracer.begin(ex)
    assert ex.trace is not None
    ex.status, ex.flags, ex.backend, ex.pool = 503, "UF", None, None
    ex.trace.end(ex)
    client, server = exporter.get_finished_spans()
    assert server.parent is not None and server.parent.span_id == 0xB7AD6B7169203331
    assert client.parent is not None and client.parent.span_id == server.context.span_id
    assert server.context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    sent = dict(ex.headers)
    assert sent[b"traceparent"] == b"00-%032x-%016x-01" % (client.context.trace_id,
                                                          client.context.span_id)
    assert sent[b"x-b3-parentspanid"] == b"%016x" % server.context.span_id
    assert not server.status.is_ok


def test_disabled_span_reporting_passes_the_decision_on_without_spans(
        memory: tuple[Tracer, InMemorySpanExporter]) -> None:
    """A Telemetry's disableSpanReporting: a sampled request (the caller's decision or this
    hop's draw) builds no span here, yet the next hop gets a sampled traceparent and B3
    headers: the caller's span as parent, or a new trace's."""
    tracer, exporter = memory
    tracer.report = False
    ex = fake_exchange([(b"host", b"reviews"), (b"traceparent", PARENT),
                        (b"x-b3-sampled", b"1")])
    tracer.begin(ex)
    assert ex.trace is None and exporter.get_finished_spans() == ()
    sent = dict(ex.headers)
    assert sent[b"traceparent"] == PARENT and sent[b"x-b3-sampled"] == b"1"
    assert sent[b"x-b3-traceid"] == PARENT[3:35] and sent[b"x-b3-spanid"] == PARENT[36:52]
    assert len(ex.headers) == 5  # host, traceparent and three B3 headers: nothing doubled
    tracer.sampling = 1.0
    ex = fake_exchange([(b"host", b"reviews")])
    tracer.begin(ex)
    assert ex.trace is None and exporter.get_finished_spans() == ()
    parsed = parse_traceparent(dict(ex.headers)[b"traceparent"])
    assert parsed is not None and parsed[2] is True
    tracer.report = True  # reporting again: the same request shape makes spans
    ex = fake_exchange([(b"host", b"reviews")])
    tracer.begin(ex)
    assert ex.trace is not None


def test_random_draw_follows_the_sampling_rate(memory: tuple[Tracer, InMemorySpanExporter]
                                               ) -> None:
    """With no incoming decision, about `sampling` of the requests are traced."""
    tracer, _ = memory
    tracer.sampling = 0.25
    sampled = 0
    for _ in range(2000):
        ex = fake_exchange([])
        tracer.begin(ex)
        sampled += ex.trace is not None
    assert 400 < sampled < 600


# --- end to end: outbound -> inbound -> app -> outbound -> inbound -> app -----------------
class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An in-process OTLP/gRPC collector that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []  # (service.name, span)
        self.arrived = asyncio.Event()

    async def Export(self, request: Any, context: Any) -> Any:
        for rs in request.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes
                           if a.key == "service.name")
            for ss in rs.scope_spans:
                self.spans.extend((service, s) for s in ss.spans)
        self.arrived.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, int]]:
    server = grpc.aio.server()
    rec = Receiver()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(rec, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield rec, port
    await server.stop(None)


def calling_app(sidecar_outbound: dict[str, int]) -> web.Application:
    """An app that calls ratings through its sidecar, forwarding the trace headers."""

    async def handle(request: web.Request) -> web.Response:
        headers = forwarded_headers(request.headers)
        headers["Host"] = "ratings"
        url = f"http://127.0.0.1:{sidecar_outbound['port']}/ratings/1"
        async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
            return web.Response(text=f"reviews+{r.status}")

    app = web.Application()
    app.router.add_get("/{tail:.*}", handle)
    return app


async def test_two_hops_make_one_linked_trace(tmp_path: Path,
                                              receiver: tuple[Receiver, int]) -> None:
    """productpage's outbound -> reviews (inbound, app, outbound) -> ratings (inbound, app)
    yields one trace whose server/client spans chain parent to child across the sidecars."""
    rec, otlp = receiver
    backends = Backends()
    procs: list[ProxyProcess] = []
    holder: dict[str, int] = {}
    try:
        ratings, ratings_in = sidecar(tmp_path / "ratings", "ratings",
                                      app=backends.aiohttp(echo_app()), services={}, otlp=otlp,
                                      sampling=1.0)
        procs.append(ratings)
        reviews, reviews_in = sidecar(tmp_path / "reviews", "reviews",
                                      app=backends.aiohttp(calling_app(holder)),
                                      services={"ratings": ratings_in}, otlp=otlp, sampling=1.0)
        procs.append(reviews)
        holder["port"] = reviews.outbound
        front, _ = sidecar(tmp_path / "pp", "productpage", app=None,
                           services={"reviews": reviews_in}, otlp=otlp, sampling=1.0)
        procs.append(front)
        req = urllib.request.Request(f"http://127.0.0.1:{front.outbound}/reviews/0",
                                     headers={"Host": "reviews"})
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(req, timeout=10).read())
        assert body == b"reviews+200"
        async with asyncio.timeout(15):
            while len(rec.spans) < 8:
                rec.arrived.clear()
                await rec.arrived.wait()
    finally:
        for p in procs:
            p.stop()
        backends.close()
    spans = rec.spans
    assert len({s.trace_id for _, s in spans}) == 1
    by_id = {s.span_id: (svc, s) for svc, s in spans}
    roots = [s for _, s in spans if s.parent_span_id not in by_id]
    assert len(roots) == 1 and roots[0].parent_span_id == b""
    # Walk the single chain from the root: server/client alternate, services in order.
    children = {s.parent_span_id: (svc, s) for svc, s in spans}
    chain, node = [], roots[0]
    while node is not None:
        chain.append((by_id[node.span_id][0], node.kind))
        nxt = children.get(node.span_id)
        node = nxt[1] if nxt else None
    server, client = 2, 3  # OTLP SpanKind values
    assert chain == [("productpage", server), ("productpage", client),
                     ("reviews", server), ("reviews", client),
                     ("reviews", server), ("reviews", client),
                     ("ratings", server), ("ratings", client)]


async def test_an_unsampled_decision_is_followed_by_the_next_hops(
        tmp_path: Path, receiver: tuple[Receiver, int]) -> None:
    """The first sidecar draws "not sampled"; the next sidecar (sampling 1.0) must follow that
    decision rather than draw again and start a trace in the middle of the chain. So the app
    behind it gets ``x-b3-sampled: 0`` and no traceparent, and no span is exported for it."""
    import json

    rec, otlp = receiver
    backends = Backends()
    procs: list[ProxyProcess] = []
    try:
        reviews, reviews_in = sidecar(tmp_path / "reviews", "reviews",
                                      app=backends.aiohttp(echo_app()), services={}, otlp=otlp,
                                      sampling=1.0)
        procs.append(reviews)
        front, _ = sidecar(tmp_path / "pp", "productpage", app=None,
                           services={"reviews": reviews_in}, otlp=otlp, sampling=0.0)
        procs.append(front)

        def fetch(headers: dict[str, str]) -> dict[str, str]:
            req = urllib.request.Request(f"http://127.0.0.1:{front.outbound}/r",
                                         headers={"Host": "reviews", **headers})
            with urllib.request.urlopen(req, timeout=10) as resp:
                return {k.lower(): v for k, v in json.loads(resp.read())["headers"]}

        seen = await asyncio.to_thread(fetch, {})
        assert seen.get("x-b3-sampled") == "0" and "traceparent" not in seen
        # A sampled marker request afterwards: once its spans are in, anything the first
        # request produced (spans end and export in order) would be too.
        marked = await asyncio.to_thread(fetch, {"traceparent": PARENT.decode()})
        assert marked["traceparent"] != PARENT.decode()
        async with asyncio.timeout(15):
            while len(rec.spans) < 4:
                rec.arrived.clear()
                await rec.arrived.wait()
    finally:
        for p in procs:
            p.stop()
        backends.close()
    marker = bytes.fromhex(PARENT.split(b"-")[1].decode())
    assert {s.trace_id for _, s in rec.spans} == {marker}


async def test_a_collector_that_is_down_neither_slows_requests_nor_holds_the_exit(
        tmp_path: Path) -> None:
    """Every request sampled, the OTLP endpoint refusing connections: requests are answered
    as ever, and SIGTERM ends the proxy within its drain and the 2 s the last spans get (the
    exporter alone would retry them for 10 s after the drain, past --drain-timeout)."""
    import time

    from tests.ports import free_port

    backends = Backends()
    proxy = None
    try:
        proxy, inbound = sidecar(tmp_path, "reviews", app=backends.aiohttp(echo_app()),
                                 services={}, otlp=free_port(), sampling=1.0)

        def call() -> float:
            started = time.monotonic()
            req = urllib.request.Request(f"http://127.0.0.1:{inbound}/r")
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
            return time.monotonic() - started

        # The bounds tell the outcomes apart with room for a loaded machine, not speed: an
        # export on the request's path would hold it for the exporter's retries (10 s), and an
        # unbounded exit took 12.4 s, against ~2 s bounded.
        took = [await asyncio.to_thread(call) for _ in range(20)]
        assert max(took) < 5.0, took
        await asyncio.sleep(1.5)  # a batch went out and failed: the exporter is retrying
        stopping = time.monotonic()
        assert proxy.stop(timeout=30) == 0
        assert time.monotonic() - stopping < 8.0, proxy.stderr()[-2000:]
    finally:
        if proxy is not None:
            proxy.stop()
        backends.close()


def test_a_failed_grpc_call_is_an_error_span(memory: tuple[Tracer, InMemorySpanExporter]
                                             ) -> None:
    """A gRPC call answered HTTP 200 with a non-zero grpc-status (14 UNAVAILABLE) failed, as
    stat counts it: both spans are errors and carry rpc.grpc.status_code; grpc-status 0 is
    not an error."""
    tracer, exporter = memory
    for grpc_status in ("14", "0"):
        ex = fake_exchange([(b"host", b"reviews"), (b"traceparent", PARENT)])
        tracer.begin(ex)
        ex.status, ex.flags, ex.backend, ex.pool = 200, "-", None, None
        ex.grpc_status = grpc_status
        ex.trace.end(ex)
    failed_client, failed_server, ok_client, ok_server = exporter.get_finished_spans()
    assert not failed_client.status.is_ok and not failed_server.status.is_ok
    assert failed_server.attributes["rpc.grpc.status_code"] == 14
    assert ok_client.status.is_unset and ok_server.status.is_unset
    assert ok_server.attributes["rpc.grpc.status_code"] == 0

"""One Bookinfo page load through the real demo yields one trace: gateway → productpage → reviews
→ ratings (and details), exported by the sidecars to an in-process OTLP receiver."""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from tests.test_demo_e2e import DIRECT, ROUTES, Demo, _free_block, _free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC collector on its own thread and event loop, keeping (service, span)."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, Any]] = []
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def Export(self, request: Any, context: Any) -> Any:
        with self.lock:
            for rs in request.resource_spans:
                service = next(a.value.string_value for a in rs.resource.attributes
                               if a.key == "service.name")
                for ss in rs.scope_spans:
                    self.spans.extend((service, s) for s in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "OTLP receiver did not start"

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = grpc.aio.server()
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, server)  # type: ignore[no-untyped-call]
        self.port = server.add_insecure_port("127.0.0.1:0")
        self.loop.run_until_complete(server.start())
        self._ready.set()
        self._server = server
        self.loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(None), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    def services_in(self, trace_id: bytes) -> set[str]:
        with self.lock:
            return {svc for svc, s in self.spans if s.trace_id == trace_id}

    def trace_ids(self) -> set[bytes]:
        with self.lock:
            return {s.trace_id for _, s in self.spans}


@pytest.fixture(scope="module")
def traced_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Demo, Receiver]]:
    workdir = tmp_path_factory.mktemp("traced-demo")
    receiver = Receiver()
    receiver.start()
    routes = workdir / "routes"
    shutil.copytree(ROUTES / "default", routes)
    mesh = routes / "mesh.yaml"
    mesh.write_text(mesh.read_text().replace(
        "tracing: {sampling: 1.0}",
        f'tracing: {{sampling: 1.0, otlpEndpoint: "127.0.0.1:{receiver.port}"}}'))
    # reviews v2 calls ratings, so the trace reaches all four services.
    route = routes / "routes.yaml"
    text = route.read_text()
    old = "- {subset: v1, weight: 100}\n        - {subset: v2, weight: 0}"
    new = "- {subset: v1, weight: 0}\n        - {subset: v2, weight: 100}"
    assert old in text
    route.write_text(text.replace(old, new))
    demo = Demo(workdir, _free_port(), _free_port())
    up = demo.meshctl("demo", "up", "--detach", "--no-traffic", "--gateway-port",
                      str(demo.gateway), "--api-port", str(demo.api), "--grpc-port",
                      str(_free_port()), "--base-port", str(_free_block()), "--certs-dir",
                      str(workdir / "certs"), "--routes", str(routes))
    try:
        assert up.returncode == 0, f"demo up failed:\n{up.stdout}\n{up.stderr}"
        yield demo, receiver
    finally:
        demo.meshctl("demo", "down")
        receiver.stop()


def test_one_page_load_is_one_trace_across_the_bookinfo_hops(
        traced_demo: tuple[Demo, Receiver]) -> None:
    """The page load's spans share one trace id and cover every service it went through."""
    demo, receiver = traced_demo
    with DIRECT.open(urllib.request.Request(
            f"http://127.0.0.1:{demo.gateway}/productpage"), timeout=30) as resp:
        page = resp.read().decode()
    assert "Reviews served by: reviews-v2" in page
    wanted = {"gateway", "productpage", "details", "reviews", "ratings"}
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        ids = receiver.trace_ids()
        if len(ids) == 1 and receiver.services_in(next(iter(ids))) >= wanted:
            break
        time.sleep(0.2)  # spans arrive in batches (1 s export interval); bounded by the deadline
    ids = receiver.trace_ids()
    assert len(ids) == 1, f"expected one trace, got {len(ids)}"
    assert receiver.services_in(next(iter(ids))) >= wanted
    with receiver.lock:
        spans = list(receiver.spans)
    known = {s.span_id for _, s in spans}
    roots = [svc for svc, s in spans if s.parent_span_id not in known]
    assert roots == ["gateway"], roots  # every other span hangs below the gateway's


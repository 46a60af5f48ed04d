"""An OTLP/gRPC trace collector on a thread of its own, for tests of real processes' spans."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


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

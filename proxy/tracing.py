"""OpenTelemetry spans per sampled request: a server span for the hop in, a client span out.

The sampling decision is made first and cheaply (an incoming sampled ``traceparent`` or B3
flag, else one random draw against ``mesh.tracing.sampling``); only a sampled request builds
spans and rewrites its ``traceparent``/B3 headers so the next hop becomes a child.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)

if TYPE_CHECKING:
    from proxy.config import Snapshot
    from proxy.exchange import Exchange
    from proxy.server import ProxyServer

log = logging.getLogger("ami.tracing")
_TRACEPARENT = b"traceparent"
_B3 = (b"x-b3-traceid", b"x-b3-spanid", b"x-b3-parentspanid", b"x-b3-sampled", b"x-b3-flags")
_DROP = frozenset((_TRACEPARENT, *_B3))
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED = b"x-b3-sampled: 0\r\n"  # B3's "do not sample", honoured by Envoy and Ami
_T_FIRST, _X_FIRST = frozenset(b"tT"), frozenset(b"xX")  # cheap pre-checks on the first byte


def parse_traceparent(value: bytes) -> tuple[int, int, bool] | None:
    """``00-<trace>-<span>-<flags>`` -> (trace id, parent span id, sampled); None if invalid."""
    parts = value.strip().split(b"-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3], 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    return trace_id, span_id, bool(flags & 1)


def incoming_context(headers: list[tuple[bytes, bytes]]
                     ) -> tuple[tuple[int, int] | None, bool | None]:
    """The parent (trace id, span id) and its sampling decision, from W3C or B3 headers."""
    b3: dict[bytes, bytes] | None = None
    for name, value in headers:
        first = name[0] if name else 0
        if first in _T_FIRST and len(name) == 11 and name.lower() == _TRACEPARENT:
            parsed = parse_traceparent(value)
            if parsed is not None:
                return (parsed[0], parsed[1]), parsed[2]
        elif first in _X_FIRST and name[:5].lower() == b"x-b3-":
            if b3 is None:
                b3 = {}
            b3[name.lower()] = value.strip()
    if b3 is None:  # the common case: no trace headers at all
        return None, None
    sampled = b3.get(b"x-b3-sampled")
    decision = None if sampled is None else sampled in (b"1", b"true", b"d")
    if b3.get(b"x-b3-flags") == b"1":
        decision = True
    try:
        parent = (int(b3[b"x-b3-traceid"], 16), int(b3[b"x-b3-spanid"], 16))
    except (KeyError, ValueError):
        parent = None
    return parent, decision


class TracedExchange:
    """The two open spans of one sampled request; ``end`` closes them when it is recorded."""

    __slots__ = ("client", "server")

    def __init__(self, server: Any, client: Any) -> None:
        self.server, self.client = server, client

    def end(self, ex: Exchange) -> None:
        status = ex.status
        backend = ex.backend
        # a gRPC call's grpc-status (an H2Exchange's; None otherwise): non-zero is a failure
        # under an HTTP 200, as stat counts it
        grpc = getattr(ex, "grpc_status", None)
        grpc_code = int(grpc) if grpc is not None and grpc.isdigit() else None
        failed = status >= 500 or status == 0 or (grpc is not None and grpc != "0")
        for span in (self.client, self.server):
            span.set_attribute("http.response.status_code", status)
            span.set_attribute("ami.response_flags", ex.flags)
            if grpc_code is not None:
                span.set_attribute("rpc.grpc.status_code", grpc_code)
            if failed:
                span.set_status(Status(StatusCode.ERROR, ex.flags if ex.flags != "-"
                                       or grpc is None else f"grpc-status {grpc}"))
        if backend is not None:
            self.client.set_attribute("peer.service", backend.metric_prefix[3])
        if ex.pool is not None:
            self.client.set_attribute("server.address", str(ex.pool.address))
        self.client.end()
        self.server.end()


class Tracer:
    """Per-proxy sampling and span creation; ``begin`` is called by every exchange's start."""

    def __init__(self, tracer: trace.Tracer, *, service: str, sampling: float = 0.0,
                 rng: random.Random | None = None) -> None:
        self.tracer = tracer
        self.service = service
        self.sampling = sampling
        self.rng = rng or random.Random()
        self.report = True  # False: a Telemetry's disableSpanReporting

    def begin(self, ex: Exchange) -> None:
        parent, decision = incoming_context(ex.headers)
        if decision is None:
            decision = self.sampling > 0 and self.rng.random() < self.sampling
            if not decision:
                # This hop made the decision: pass it on, so that the next sidecars follow it
                # instead of each drawing again and starting traces in the middle of the chain.
                ex.head_tail.append(_NOT_SAMPLED)
                return
        if decision:
            if self.report:
                ex.trace = self._spans(ex, parent)
            else:
                self._propagate(ex, parent)

    def _propagate(self, ex: Exchange, parent: tuple[int, int] | None) -> None:
        """Sampled, but this proxy reports no span (disableSpanReporting): the next hop still
        joins the trace, as a child of the caller's span (or of a new trace's root)."""
        trace_id = parent[0] if parent is not None else self.rng.getrandbits(128) or 1
        span_id = parent[1] if parent is not None else self.rng.getrandbits(64) or 1
        headers = [h for h in ex.headers if h[0].lower() not in _DROP]
        headers += [
            (b"traceparent", b"00-%032x-%016x-01" % (trace_id, span_id)),
            (b"x-b3-traceid", b"%032x" % trace_id), (b"x-b3-spanid", b"%016x" % span_id),
            (b"x-b3-sampled", b"1"),
        ]
        ex.headers = headers

    def _spans(self, ex: Exchange, parent: tuple[int, int] | None) -> TracedExchange:
        ctx = None
        if parent is not None:
            remote = SpanContext(parent[0], parent[1], is_remote=True, trace_flags=_SAMPLED)
            ctx = trace.set_span_in_context(NonRecordingSpan(remote))
        kind = ex.downstream.listener.kind
        method = ex.method.decode("latin-1")
        attrs = {"http.request.method": method, "url.path": ex.path,
                 "server.address": ex.authority, "ami.listener": kind}
        server = self.tracer.start_span(f"{self.service} {kind} {method}", context=ctx,
                                        kind=SpanKind.SERVER, attributes=attrs)
        client = self.tracer.start_span(f"{self.service} -> {ex.authority}",
                                        context=trace.set_span_in_context(server),
                                        kind=SpanKind.CLIENT, attributes=attrs)
        sc, cc = server.get_span_context(), client.get_span_context()
        headers = [h for h in ex.headers if h[0].lower() not in _DROP]
        headers += [
            (b"traceparent", b"00-%032x-%016x-01" % (cc.trace_id, cc.span_id)),
            (b"x-b3-traceid", b"%032x" % cc.trace_id), (b"x-b3-spanid", b"%016x" % cc.span_id),
            (b"x-b3-parentspanid", b"%016x" % sc.span_id), (b"x-b3-sampled", b"1"),
        ]
        ex.headers = headers
        return TracedExchange(server, client)


def install_tracing(server: ProxyServer, endpoint: str | None = None, *,
                    exporter: SpanExporter | None = None,
                    rng: random.Random | None = None) -> bool:
    """Trace this proxy's requests once it knows its service; no endpoint, no tracing."""
    endpoint = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter is None and not endpoint:
        return False
    state: dict[str, Tracer] = {}

    def on_snapshot(snapshot: Snapshot) -> None:
        tracer = state.get("tracer")
        if tracer is None:
            span_exporter = exporter or _otlp_exporter(str(endpoint))
            # No atexit shutdown of its own: that one waits for the exporter, which retries
            # a collector that is down for 10 s; the proxy's exit bounds it (close_tracing).
            provider = TracerProvider(resource=Resource.create(
                {"service.name": snapshot.node.service,
                 "service.version": snapshot.node.version}), shutdown_on_exit=False)
            server.tracing_provider = provider
            provider.add_span_processor(BatchSpanProcessor(span_exporter,
                                                           schedule_delay_millis=1000))
            tracer = state["tracer"] = Tracer(provider.get_tracer("ami.proxy"),
                                              service=snapshot.node.service, rng=rng)
        tracer.sampling = snapshot.tracing_sampling  # a Telemetry's, else the mesh's
        tracer.report = snapshot.telemetry is None or not snapshot.telemetry.disable_span_reporting
        for listener in server.listeners.values():
            listener.tracer = tracer

    server.on_snapshot.append(on_snapshot)
    if server.snapshot is not None:
        on_snapshot(server.snapshot)
    return True


async def close_tracing(server: ProxyServer, timeout: float = 2.0) -> None:
    """At exit: export the spans still batched, for ``timeout`` s at most. A collector that
    is down or hung (the OTLP exporter retries for 10 s) must not hold the proxy past its
    drain deadline; what it did not take by then is lost, as the access log's stuck reader's
    lines are."""
    provider = server.tracing_provider
    if provider is None:
        return
    server.tracing_provider = None
    # A daemon thread: the interpreter's exit does not wait for a shutdown still retrying.
    closing = threading.Thread(target=provider.shutdown, name="otel-shutdown", daemon=True)
    closing.start()
    await asyncio.to_thread(closing.join, timeout)
    if closing.is_alive():
        log.warning("tracing: the OTLP collector took no spans within %.0f s; "
                    "the last ones are dropped", timeout)


def _otlp_exporter(endpoint: str) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    insecure = not endpoint.startswith("https://")
    return OTLPSpanExporter(endpoint=endpoint, insecure=insecure)

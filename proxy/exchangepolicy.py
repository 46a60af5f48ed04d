"""What a route's policies do to an exchange: admission, faults, timeouts and retries.

`Exchange` binds these functions as its methods: they read the route's `Decision` and decide,
while the exchange itself moves bytes. Before dispatch: admission (rate limits,
authorization), fault injection, the route timeout, the retry budget, a mirror. After a failed
attempt: a retry (conditions, attempts, budget, backoff) or a local reply.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from proxy.extauthz import CHECKING
from proxy.reasons import REASON_HEADER

if TYPE_CHECKING:
    from proxy.exchange import Exchange
    from proxy.routing import Decision
    from proxy.upstream import UpstreamConnection

log = logging.getLogger("ami.proxy")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
MAX_REPLAY = 64 * 1024  # request body kept for retries; larger bodies are not retried
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def rate_limited(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an answer is a sidecar's rate-limit refusal (`x-ami-reason: rate_limited`,
    the destination's inbound sidecar's 429, or its gRPC UNAVAILABLE). Such an answer is
    never retried, whatever `retryOn` says, as Envoy never retries one carrying
    `x-envoy-ratelimited`: a retry only adds load to a destination that asked for less.
    Called only for an answer that would be retried, so other answers pay nothing."""
    return any(value.strip() == b"rate_limited" and name.lower() == REASON_HEADER
               for name, value in headers)


def internal_error(ex: Exchange) -> None:
    """A step of this request raised (a bug): log it and answer 500 `internal_error`, or cut
    a response already under way, so the client is never left waiting for nothing."""
    log.exception("internal error while handling a request")
    try:
        ex._cancel_timers()
        ex._drop_attempt()
        ex._release_pool()
        ex.reply("internal_error")
    except Exception:
        log.exception("internal error while answering it; closing the connection")
        ex.downstream.abort_after(ex)


def guarded(step: Callable[[Exchange], None]) -> Callable[[Exchange], None]:
    """For steps run from the event loop (timers, tasks): a bug answers `internal_error`
    instead of being logged by asyncio while the client waits forever."""
    @functools.wraps(step)
    def run(ex: Exchange) -> None:
        try:
            step(ex)
        except Exception:
            internal_error(ex)
    return run


# --- before dispatch: admission, faults, timeouts, retry budget, mirror ------------------
def start(ex: Exchange) -> None:
    """Route the request and run the steps before dispatch; may answer locally instead."""
    listener = ex.downstream.listener
    tracer = listener.tracer
    if tracer is not None:
        tracer.begin(ex)  # decides sampling; only a sampled request builds spans
    decision = listener.router.route(ex)
    if isinstance(decision, str):
        ex.reply(decision)
        return
    ex.decision = decision
    ex.response_edits = decision.response_header_ops
    if decision.admit is not None or decision.fault is not None:
        admit_then_proceed(ex, decision)
    else:
        ex._proceed()


def admit_then_proceed(ex: Exchange, decision: Decision) -> None:
    """Admission (authorization, rate limit, a rewrite, a local answer), then a fault, then
    the request goes on; any of them may answer it instead."""
    if decision.admit is not None:
        refusal = decision.admit(ex)
        if refusal is not None:
            if refusal is CHECKING:
                return  # an external check runs: its answer resumes (or refuses) the request
            # (reason, status, headers), or with a body of its own (a directResponse)
            ex.backend = decision.backends[0] if decision.backends else None
            ex.reply(refusal[0], status=refusal[1], extra_headers=refusal[2],
                     body=refusal[3] if len(refusal) > 3 else None)
            return
    fault = decision.fault
    if fault is not None:
        delay = fault.roll_delay()
        if delay:
            ex._count("ami_faults_injected", "delay")
            ex._timer = ex.downstream.loop.call_later(delay, ex._after_delay)
            return
        if ex._inject_abort():
            return
    ex._proceed()


@guarded
def resume(ex: Exchange) -> None:
    """An admission step that waited (proxy.extauthz's check) let ``ex`` through: the
    admission runs again (that step passes now, never answering CHECKING twice), then the
    request goes on as from start."""
    decision = ex.decision
    assert decision is not None  # (routed again by clearRouteCache: maybe no admission)
    admit_then_proceed(ex, decision)


@guarded
def after_delay(ex: Exchange) -> None:
    """Fault delay over: maybe abort, else go on."""
    ex._timer = None
    if not ex._inject_abort():
        ex._proceed()


def inject_abort(ex: Exchange) -> bool:
    """Roll the route's abort fault; True when it answered the request."""
    decision = ex.decision
    assert decision is not None and decision.fault is not None
    status = decision.fault.roll_abort()
    if not status:
        return False
    ex._count("ami_faults_injected", "abort")
    ex.backend = decision.backends[0]
    ex.reply("fault_injected", status=status, grpc_status=decision.fault.abort_grpc)
    return True


def proceed(ex: Exchange) -> None:
    """Arm the timeout, take part in the retry budget, start a mirror, dispatch."""
    decision = ex.decision
    assert decision is not None
    if ex.expect_continue:
        ex.downstream.write(_CONTINUE)
    timeout = decision.timeout
    if ex.timeout_override is not None and (timeout is None or ex.timeout_override < timeout):
        timeout = ex.timeout_override  # a request may tighten, never loosen, its timeout
    if timeout is not None:
        if ex.request_done:
            ex._timer = ex.downstream.loop.call_later(timeout, ex._on_timeout)
        else:
            ex._route_timeout = timeout  # started by Exchange.request_complete
    retry = decision.retry
    if retry is not None:
        assert retry.state.budget is not None
        retry.state.budget.record_request()
        if (ex.method in IDEMPOTENT or retry.allow_non_idempotent
                or (ex.http2 and retry.grpc_codes and ex.grpc)):  # type: ignore[attr-defined]
            # (A route that names gRPC conditions retries gRPC calls, all POSTs, as Envoy.)
            # The body that came during a fault delay is held for the first try: a retry
            # must resend it too.
            held = ex._body_buffer
            if not held:
                ex._replay = []
            elif ex.bytes_in <= MAX_REPLAY:
                ex._replay = list(held)
    mirror = decision.mirror
    if mirror is not None and mirror.roll():
        if ex.http2:  # an HTTP/2 copy of an HTTP/2 request (gRPC servers speak nothing else)
            from proxy.h2mirror import H2MirrorRequest

            ex.mirror = H2MirrorRequest.start(ex, mirror.backend)  # type: ignore[arg-type]
        else:
            from proxy.mirror import MirrorRequest

            ex.mirror = MirrorRequest.start(ex, mirror.backend)
    ex.dispatch()


def count(ex: Exchange, name: str, kind: str | None = None) -> None:
    """Count a policy event against the destination service."""
    backend = ex.backend or (ex.decision.backends[0] if ex.decision else None)
    # (the backend's destination_service label, as its requests': `api.a`, not the key `api`)
    service = backend.metric_prefix[3] if backend is not None else "unknown"
    labels: tuple[tuple[str, str], ...] = (("destination_service", service),)
    if kind is not None:
        labels += (("kind", kind),)
    ex.downstream.listener.stats.inc(name, labels)


# --- after a failed attempt: retry or answer ----------------------------------------------
def upstream_error(ex: Exchange, conn: UpstreamConnection, reason: str) -> None:
    """The upstream connection failed: fresh-connection retry, abort, or a failed attempt."""
    ex.conn = None
    if (reason == "upstream_reset" and not ex.response_started and not ex._fresh_retry_used
            and conn.requests > 1 and ex.method in IDEMPOTENT and not ex.chunked
            and ex.bytes_in == 0):
        # Keep-alive race: a reused connection died before any response byte. Retry once on
        # a fresh connection (the request had no body, so resending is exact). Not for a
        # malformed answer: the server did answer, and would only be asked twice.
        ex._fresh_retry_used = True
        pool = ex.pool
        if pool is not None:
            ex._open_connection(pool)
            return
    if ex.response_started:
        ex._release_pool()
        ex.reply(reason)
        return
    ex._attempt_failed("reset", reason)


def attempt_failed(ex: Exchange, kind: str, reason: str, asked: bool = True) -> None:
    """An attempt ended without a response: retry if declared and allowed, else reply.
    `asked`: the endpoint was asked (connected or connecting), so the failure is its own."""
    if ex._attempt_timer is not None:
        ex._attempt_timer.cancel()
        ex._attempt_timer = None
    backend = ex.backend
    if asked and backend is not None and ex.pool is not None:
        if backend.outlier is not None:
            backend.outlier.record(ex.pool, None)
        if backend.ewma is not None:
            backend.ewma.observe_failure(ex.pool, ex.downstream.loop.time() - ex._try_start)
    ex._release_pool()
    retry = ex.decision.retry if ex.decision is not None else None
    if retry is not None and retry.retriable_failure(kind) and ex._may_retry():
        ex._schedule_retry()
        return
    if kind == "connect-failure" and ex._connect_failover():
        return
    ex.reply(reason)


def connect_failover(ex: Exchange) -> bool:
    """A connection could not be opened: send the request to another endpoint, once.

    Nothing reached the failed endpoint (the body received so far is still held), so this is
    safe for every method and is not a retry: no retry policy or budget is involved. It hides
    an endpoint that went away (sidecar stopped or killed) until the config drops it.
    """
    backend = ex.backend
    failed = ex.pool
    if (ex._failover_used or backend is None or failed is None or len(backend.pools) < 2
            or ex.downstream.closed or ex.response_started):
        return False
    # (keyed by a CONSISTENT_HASH key, if any: the next owner round the ring, as a retry)
    pool = backend.pick_endpoint(ex, [failed, *(ex._tried or ())])
    if pool is None:
        return False
    conn: Any  # (an H2UpstreamConnection from take_h2)
    if not ex.http2:
        conn = pool.take_idle()
    elif not ex.choose_upstream(pool):
        return True  # answered: the request cannot go there
    else:
        conn = pool.take_h2() if ex.upstream_h2 else pool.take_idle()
    if conn is None and pool.breaker is not None and pool.breaker.connections_full():
        return False  # no queueing here: the connection limit holds
    ex._failover_used = True
    ex.pool = pool
    ex._pool_held = True
    pool.active_requests += 1
    if backend.ewma is not None:
        ex._try_start = ex.downstream.loop.time()  # this try's latency, not the failed one's
    decision = ex.decision
    per_try = decision.retry.per_try_timeout if decision is not None and \
        decision.retry is not None else None
    if per_try is not None:
        ex._attempt_timer = ex.downstream.loop.call_later(per_try, ex._on_attempt_timeout)
    if conn is not None:
        ex._send_on(conn)
    else:
        ex._open_connection(pool)
    return True


def may_retry(ex: Exchange) -> bool:
    """Attempts left, the body replayable, the destination's maxRetries and the budget allow
    one more."""
    decision = ex.decision
    assert decision is not None and decision.retry is not None
    retry = decision.retry
    if ex._replay is None or ex._attempt >= retry.attempts or ex.downstream.closed:
        return False
    backend = ex.backend
    breaker = backend.state.breaker if backend is not None and backend.state is not None else None
    if breaker is not None and breaker.retries_full(ex):
        ex._count("ami_retry_overflow")
        return False
    assert retry.state.budget is not None
    if not retry.state.budget.try_withdraw():
        ex._count("ami_retry_budget_exhausted")
        return False
    if breaker is not None:
        breaker.retry_started(ex)
    return True


def schedule_retry(ex: Exchange) -> None:
    """Dispatch again after the backoff delay."""
    decision = ex.decision
    assert decision is not None and decision.retry is not None
    delay = decision.retry.backoff.delay(ex._attempt)
    if ex.pool is not None:  # the retry avoids the endpoints already tried (if it can)
        if ex._tried is None:
            ex._tried = [ex.pool]
        else:
            ex._tried.append(ex.pool)
    ex._attempt += 1
    ex._count("ami_retries")
    ex._retry_timer = ex.downstream.loop.call_later(delay, ex._retry_now)


@guarded
def retry_now(ex: Exchange) -> None:
    """The backoff ended: dispatch unless the client left or an answer started."""
    ex._retry_timer = None
    if not ex.downstream.closed and not ex.response_started:
        ex.dispatch()


@guarded
def on_attempt_timeout(ex: Exchange) -> None:
    """Per-try timeout: give up on this attempt (the request may still be retried)."""
    ex._attempt_timer = None
    # Spent waiting for a connection (the breaker's queue), the try asked no endpoint: its
    # outlier detection and latency do not count it, as Envoy's do not.
    asked = ex.conn is not None or ex._connect_task is not None
    ex._drop_attempt()
    ex._attempt_failed("timeout", "timeout", asked)


@guarded
def on_timeout(ex: Exchange) -> None:
    """Route timeout: no response headers in time; answer 504 whatever else is pending."""
    ex._timer = None
    _record_unanswered(ex)
    ex._drop_attempt()
    ex._release_pool()
    ex.reply("timeout")


@guarded
def on_stream_idle(ex: Exchange) -> None:
    """No byte moved either way for the stream idle timeout (Envoy's stream_idle_timeout).

    A client that stopped sending its body gets 408; a request whose upstream stopped
    answering gets 504 (and counts against the endpoint, like a route timeout); a response
    already under way is cut short, so the client sees a truncated message.
    """
    if ex.request_done and not ex.response_started:
        _record_unanswered(ex)
    ex._drop_attempt()
    ex._release_pool()
    client_stalled = not ex.request_done and not ex.response_started
    ex.reply("stream_idle_timeout", status=408 if client_stalled else None)


def on_malformed_body(ex: Exchange, reason: str) -> None:
    """The client's body broke its framing after the head was in (the head may be upstream
    already): the attempt is dropped and the client answered `reason` (400), the connection
    then closed; a response already under way is cut short."""
    ex._drop_attempt()
    ex._release_pool()
    ex.reply(reason)


def _record_unanswered(ex: Exchange) -> None:
    """The endpoint being asked did not answer in time (Envoy counts it as a 504)."""
    backend = ex.backend
    if (backend is not None and ex.pool is not None
            and (ex.conn is not None or ex._connect_task is not None)):
        if backend.outlier is not None:
            backend.outlier.record(ex.pool, None)
        if backend.ewma is not None:
            backend.ewma.observe_failure(ex.pool, ex.downstream.loop.time() - ex._try_start)


def drop_attempt(ex: Exchange) -> None:
    """Abandon the current attempt: its connect, backoff, breaker wait or connection."""
    if ex._connect_task is not None:
        ex._connect_task.cancel()
        ex._connect_task = None
    if ex._retry_timer is not None:
        ex._retry_timer.cancel()
        ex._retry_timer = None
    if ex._waiting and ex.backend is not None and ex.backend.state is not None:
        breaker = ex.backend.state.breaker
        if breaker is not None:
            breaker.cancel_wait(ex)
        ex._waiting = False
    conn, ex.conn = ex.conn, None
    if conn is not None:
        conn.abort()


def cancel_timers(ex: Exchange) -> None:
    """Cancel the route, per-try and backoff timers."""
    if ex._timer is not None:
        ex._timer.cancel()
        ex._timer = None
    if ex._attempt_timer is not None:
        ex._attempt_timer.cancel()
        ex._attempt_timer = None
    if ex._retry_timer is not None:
        ex._retry_timer.cancel()
        ex._retry_timer = None

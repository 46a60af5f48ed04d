"""Reason words for every response the proxy makes itself, and the local replies that carry them.

The word travels in the `x-ami-reason` response header, in the access log and in the
`response_flags` metric label, so "why did this fail" is answered in one place.
"""

from __future__ import annotations

from typing import Any

REASON_HEADER = b"x-ami-reason"

# reason word -> (status, one-line explanation used in the reply body and in docs/proxy.md)
REASONS: dict[str, tuple[int, str]] = {
    "bad_request": (400, "malformed HTTP request"),
    "request_smuggling": (400, "ambiguous message framing (Content-Length / Transfer-Encoding)"),
    "invalid_header": (400, "invalid character or syntax in a header"),
    "version_not_supported": (505, "HTTP version other than 1.0 and 1.1 in a request line "
                                   "(HTTP/2 begins with its connection preface)"),
    "request_timeout": (408, "request headers not received in time"),
    "uri_too_long": (414, "request line too long"),
    "headers_too_large": (431, "request header section too large"),
    "method_not_allowed": (405, "CONNECT needs a mesh service, an ExternalService port "
                                "or ALLOW_ANY (outbound listener only)"),
    "redirect": (301, "redirected by a route rule (see Location)"),
    "cors_preflight": (200, "CORS preflight answered by the route's cors policy"),
    "direct_response": (200, "answered by the route rule's directResponse (its status and "
                             "body)"),
    "jwt_invalid": (401, "the request's JWT failed validation (RequestAuthentication)"),
    "not_authorized": (403, "denied by authorization policy"),
    "ext_authz_denied": (403, "denied by the external authorization service of an "
                              "AuthorizationPolicy CUSTOM (its status, body and headers)"),
    "ext_authz_error": (403, "the external authorization service could not be asked (no "
                             "endpoint, a connection error, its timeout): the provider's "
                             "statusOnError"),
    "misdirected_request": (421, "the HTTPS gateway passes TLS for this host through by its "
                                 "server name: ask on a connection naming it"),
    "no_route": (404, "no route for this request (its host; at the gateway, host and path)"),
    "rate_limited": (429, "local rate limit exceeded"),
    "fault_injected": (503, "fault injected by route"),
    "upstream_connect_failure": (503, "could not connect to an upstream endpoint"),
    "no_healthy_upstream": (503, "no healthy endpoint for the destination"),
    "overflow": (503, "circuit breaker: connection pool limit reached"),
    "upstream_reset": (502, "upstream closed the connection before a complete response"),
    "upstream_protocol_error": (502, "upstream sent a malformed response"),
    "protocol_mismatch": (502, "the destination does not speak this request's protocol "
                               "(its appProtocol)"),
    "timeout": (504, "upstream did not answer in time"),
    "stream_idle_timeout": (504, "no byte moved either way within the stream idle timeout"),
    "too_many_connections": (503, "listener connection limit reached"),
    "internal_error": (500, "internal proxy error (see the proxy log)"),
    "downstream_disconnect": (499, "client closed the connection before the response "
                                   "or during its body"),
    "downstream_protocol_error": (0, "a malformed HTTP/2 request (RFC 9113 8.1.1): its "
                                     "stream reset with PROTOCOL_ERROR, the connection's other "
                                     "streams go on"),
    "drain_timeout": (0, "the proxy shut down at its drain deadline (--drain-timeout) with "
                         "the request still in flight: its connection closed"),
    "tls_in_tunnel": (400, "TLS inside a CONNECT tunnel to a mesh service: the mesh does the "
                           "TLS, the app speaks plaintext to its sidecar"),
    "bad_client_hello": (0, "a TLS connection to the gateway whose ClientHello could not be "
                            "read (malformed, over 16 KiB, or cut off): closed"),
    "idle_timeout": (0, "a TCP service's connection moved no byte either way for its "
                        "DestinationPolicy connectionPool.tcpIdleTimeout (1h by default): "
                        "closed at both apps"),
}

# Reasons that end a connection without any answer (logs and metrics only: response_code 0).
NOT_SENT = frozenset({"downstream_disconnect", "drain_timeout", "downstream_protocol_error",
                      "tls_in_tunnel", "idle_timeout", "bad_client_hello"})

# Statuses whose responses have no body (RFC 9110 6.4.1, and 15.3.6: a server "MUST NOT
# generate content in a 205 response"; browsers read none after one) and, to be safe with
# both, no Content-Length for 204 and 304 (a 204 must not have one; a 304's would describe
# another response's body); a 205 says `content-length: 0` to any client that does not know
# (RFC 7231 6.3.6)
NO_BODY = frozenset({204, 205, 304})

# A local reply's content-type unless the routed rule's response edits give one
TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")

# Marker in the response_flags label for a request that the proxy did not answer itself.
NO_FLAGS = "-"


def body_length(reason: str) -> int:
    """Bytes in the body of ``local_reply(reason)`` (the access log's and metrics' body bytes)."""
    return len(f"{reason}: {REASONS[reason][1]}\n".encode())


def local_reply(reason: str, *, status: int | None = None, close: bool = False,
                extra_headers: tuple[tuple[bytes, bytes], ...] = (), head: bool = False,
                edits: Any = None, body: bytes | None = None) -> bytes:
    """Serialize a complete plain-text response for a locally generated error.

    ``head``: the answer to a HEAD request, whose headers describe a body that is not sent.
    ``edits``: the routed rule's response header edits (``edit_pairs``), applied to the
    reply's headers but for its framing and its reason header, which stay as they are.
    ``body``: the reply's own body (a directResponse's), instead of the reason's line.
    """
    code, text = REASONS[reason]
    code = status or code
    if body is None:
        body = f"{reason}: {text}\n".encode()
    length = [b"content-length: %d" % len(body)]
    if code in NO_BODY:  # (a 204, 205 or 304 a rule declares)
        body, length = b"", [b"content-length: 0"] if code == 205 else []
    if edits is None:
        lines = [
            b"HTTP/1.1 %d %s" % (code, _status_text(code)),
            b"content-type: text/plain; charset=utf-8",
            *length,
            REASON_HEADER + b": " + reason.encode(),
        ]
        lines.extend(name + b": " + value for name, value in extra_headers)
    else:
        lines = [
            b"HTTP/1.1 %d %s" % (code, _status_text(code)),
            *length,
            REASON_HEADER + b": " + reason.encode(),
        ]
        lines.extend(name + b": " + value for name, value in edited_local_headers(
            edits, [TEXT_PLAIN, *extra_headers]))
    if close:
        lines.append(b"connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else body)


def edited_local_headers(edits: Any, headers: list[tuple[bytes, bytes]],
                         keep: frozenset[bytes] = frozenset((REASON_HEADER,)),
                         ) -> list[tuple[bytes, bytes]]:
    """A local reply's own headers (``headers``, without framing) after a rule's response
    edits; a header named in ``keep`` (the reason header...) is the reply's, neither removed
    nor set again by an edit. A content-type the edits add replaces the reply's default
    TEXT_PLAIN (as Envoy's local replies, which set text/plain only when the route's header
    edits gave none): `add` would otherwise send two, one of which a client picks."""
    out = [h for h in edits.edit_pairs(headers) if h[0].lower() not in keep]
    if TEXT_PLAIN in headers and sum(h[0].lower() == b"content-type" for h in out) > 1:
        out.remove(TEXT_PLAIN)
    return out


def _status_text(code: int) -> bytes:
    from http import HTTPStatus

    try:
        return HTTPStatus(code).phrase.encode()
    except ValueError:
        return b"Unknown"

"""The bound listeners, their TLS, connection limit and open connections: for /config_dump."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from proxy.adminhttp import MAX_ADMIN_CONNECTIONS

if TYPE_CHECKING:
    from proxy.server import ProxyServer

APP_SIDE = "none (the app's side, loopback)"


def listener_view(server: ProxyServer) -> list[dict[str, Any]]:
    """One entry per bound listener: data-plane listeners by kind, each `--tcp-upstream`
    port, and the admin listener. Read when asked (a few attribute reads)."""
    view = []
    for kind, listener in sorted(server.listeners.items()):
        if listener.server is None:
            continue
        view.append({"name": kind, "address": str(server.bound_address(kind)), "mode": kind,
                     "tls": _tls(server, kind), "maxConnections":
                     listener.limits.max_connections,
                     "connections": len(listener.connections)})
    for tcp in server.tcp_listeners:
        if tcp.server is None or not tcp.server.sockets:
            continue
        host, port = tcp.server.sockets[0].getsockname()[:2]
        view.append({"name": f"tcp {tcp.spec.service}", "address": f"{host}:{port}",
                     "mode": "tcp", "tls": APP_SIDE, "maxConnections": tcp.max_connections,
                     "connections": len(tcp.sessions)})
    admin = server.admin
    if admin is not None and admin.server is not None and admin.server.sockets:
        host, port = admin.server.sockets[0].getsockname()[:2]
        view.append({"name": "admin", "address": f"{host}:{port}", "mode": "admin",
                     "tls": ("mTLS or plaintext" if admin.tls is not None
                             and server.tls is not None else "plaintext"),
                     "maxConnections": MAX_ADMIN_CONNECTIONS,
                     "connections": len(admin.connections)})
    return view


def _tls(server: ProxyServer, kind: str) -> str:
    if kind == "inbound":  # this service's mode (PeerAuthentication, else the mesh's)
        mode = server.snapshot.inbound_mtls if server.snapshot is not None else "STRICT"
        if mode != "DISABLE" and server.tls is None:
            return f"mTLS {mode} (no certificate yet)"
        return f"mTLS {mode}"
    if kind == "gateway":
        served = server.options.gateway_tls
        if served is None:
            return "none (HTTP)"
        if len(served.pairs) == 1:
            return "HTTPS"
        return "HTTPS: " + "; ".join(", ".join(pair.names) or str(pair.cert_file)
                                     for pair in served.pairs)
    return APP_SIDE

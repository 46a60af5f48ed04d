"""``meshctl proxy-status``: every proxy, the config it runs, and whether it is in sync."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``proxy-status`` command."""
    p = subparsers.add_parser(
        "proxy-status", help="show each proxy's config version and sync state",
        description="List the proxies connected to the control plane: service, version, "
                    "addresses, the Ami version each runs, the config version each has ACKed, "
                    "and SYNCED / STALE / NACK.")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=run_proxy_status)


# The app's probed state: NOT-SERVING means its endpoint is withdrawn from the mesh.
APP_WORDS = {"serving": "SERVING", "not_serving": "NOT-SERVING"}


def status_word(proxy: dict[str, Any]) -> str:
    """SYNCED, STALE, NACK: <error> or DISCONNECTED for one proxy object."""
    if proxy.get("nack"):
        return f"NACK: {proxy['nack']}"
    if not proxy.get("connected", True):
        return "DISCONNECTED"
    return "SYNCED" if proxy.get("synced") else "STALE"


def render_table(proxies: list[dict[str, Any]]) -> str:
    """The table form (NAME SERVICE VERSION INBOUND APP PROXY-VERSION CONFIG STATUS LAST-ACK):
    VERSION is the workload's version label, PROXY-VERSION the Ami version the proxy runs
    (`unknown` from a proxy, or a control plane, older than version reporting)."""
    header = ("NAME", "SERVICE", "VERSION", "INBOUND", "APP", "PROXY-VERSION", "CONFIG",
              "STATUS", "LAST-ACK")
    rows = [header] + [
        (p["name"], p["service"], p.get("version") or "-", p.get("inbound") or "-",
         APP_WORDS.get(p.get("app") or "", "-"), p.get("proxyVersion") or "unknown",
         p.get("configVersion") or "-", status_word(p), p.get("lastAck") or "-")
        for p in proxies]
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header) - 1)]
    lines = ["   ".join([*(str(c).ljust(w) for c, w in zip(r, widths, strict=False)),
                         str(r[-1])]).rstrip() for r in rows]
    return "\n".join(lines)


def run_proxy_status(args: argparse.Namespace) -> int:
    """Print the proxies; 1 if the control plane cannot be reached or refuses."""
    # (imported here: the command line's set-up stays light)
    from meshctl.commands.calls import make_client, reports_errors

    @reports_errors
    def run(args: argparse.Namespace) -> int:
        # with the token: reads from another machine need it, as for `meshctl get`
        client = make_client(args)
        proxies = list(client.field(client._json("GET", "/api/v1/proxies"), "proxies", list))
        if args.output == "json":
            print(json.dumps(proxies, indent=2))
        elif proxies:
            print(render_table(proxies))
        else:
            print("no proxies connected")
        return 0

    return run(args)

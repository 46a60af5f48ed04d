"""``meshctl stat | edges | routes | authz | top | tap | check | dashboard``: what the mesh is
doing right now."""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
import webbrowser
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from meshctl import output
from meshctl.api.durations import parse_seconds, parse_window
from meshctl.client import ControlPlaneClient, not_http
from meshctl.commands.calls import (
    error_text,
    make_client,
    reports_errors,
    request_json,
    unreachable_hint,
)


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def _ms(value: Any) -> str:
    return "-" if value is None else f"{float(value):.0f}ms"


def _bytes(value: Any) -> str:
    """Bytes per second, in B, kB or MB (powers of 1000)."""
    if value is None:
        return "-"
    rate = float(value)
    if rate < 1e3:
        return f"{rate:.0f}B/s"
    return f"{rate / 1e3:.1f}kB/s" if rate < 1e6 else f"{rate / 1e6:.1f}MB/s"


def _count(value: Any) -> str:
    return "-" if value is None else str(int(value))


def _get(client: ControlPlaneClient, path: str, **query: str | None) -> Any:
    params = urlencode({k: v for k, v in query.items() if v})
    status, body = request_json(client, "GET", path + ("?" + params if params else ""))
    if status == 404 and (not body or body.get("error") in (None, "Not Found")):
        # (no such path; a 404 of the endpoint itself says what it did not find)
        raise SystemExit(f"error: the control plane does not serve {path} "
                         "(observability is not enabled in this `meshctl serve`)")
    if status != 200:  # the API's words, without its path (as every other command)
        raise SystemExit(f"error: {error_text(body) if body else f'HTTP {status}'}")
    return body


def window_arg(text: str) -> str:
    """``--window``: ``30s``, ``5m``, ``1h`` or seconds above 0; anything else is a usage
    error (exit 2) before the control plane is asked."""
    try:
        parse_window(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def interval_arg(text: str) -> float:
    """``top --interval``: seconds above 0 (the API taps for 0.1 to 10 of them)."""
    try:
        return parse_seconds(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@reports_errors
def stat(args: argparse.Namespace) -> int:
    body = _get(make_client(args), "/api/v1/stat", service=args.service,
                **{"from": args.source, "window": args.window})
    if args.output == "json":
        print(output.to_json(body), end="")
        return 0
    headers = ["SERVICE", "VERSION", "SUCCESS", "RPS", "P50", "P95", "P99", "MTLS",
               "TCP_CONN"]
    wide = args.output == "wide"
    if wide:
        headers += ["READ_BYTES/SEC", "WRITE_BYTES/SEC"]
    rows = []
    for r in body["rows"]:
        # A row with TCP traffic only has no requests: "-" rather than a 0.0 that looks
        # like an idle HTTP service.
        rps = "-" if r["rps"] == 0 and r.get("tcpConnections") is not None else f"{r['rps']:.1f}"
        row = [r["service"], r["version"], _pct(r["successRate"]), rps, _ms(r["p50"]),
               _ms(r["p95"]), _ms(r["p99"]), _pct(r["mtlsShare"]), _count(r.get("tcpConnections"))]
        if wide:
            row += [_bytes(r.get("tcpReadBytesPerSec")), _bytes(r.get("tcpWriteBytesPerSec"))]
        rows.append(row)
    print(output.render_table(headers, rows), end="")
    return 0


@reports_errors
def edges(args: argparse.Namespace) -> int:
    body = _get(make_client(args), "/api/v1/edges", window=args.window)
    if args.output == "json":
        print(output.to_json(body), end="")
        return 0
    rows = [(f"{e['source']} ({e['sourceVersion']})",
             f"{e['destination']} ({e['destinationVersion']})", _security(e),
             "-" if e["rps"] == 0 and e.get("tcpConnections") is not None else f"{e['rps']:.1f}",
             _pct(e["successRate"]), _ms(e["p99"]), _count(e.get("tcpConnections")))
            for e in body["edges"]]
    print(output.render_table(("SOURCE", "DESTINATION", "SECURITY", "RPS", "SUCCESS", "P99",
                               "TCP_CONN"), rows), end="")
    return 0


def _service_report(args: argparse.Namespace, path: str) -> dict[str, Any] | None:
    """One service's report over ``--window``; None when printed already (``-o json``, or
    the control plane's message instead of rows)."""
    body: dict[str, Any] = _get(make_client(args), path, service=args.service,
                                namespace=args.namespace, window=args.window)
    if args.output == "json":
        print(output.to_json(body), end="")
        return None
    if body.get("message"):
        print(body["message"])
        return None
    return body


@reports_errors
def routes(args: argparse.Namespace) -> int:
    body = _service_report(args, "/api/v1/routes")
    if body is None:
        return 0
    headers = ["ROUTE", "RULE", "SUCCESS", "RPS", "P50", "P95", "P99"]
    wide = args.output == "wide"
    if wide:
        headers += ["SHARE", "BACKENDS"]
    rows = []
    for r in body["rows"]:
        row = [r["route"] or "-", r["rule"], _pct(r["successRate"]), f"{r['rps']:.1f}",
               _ms(r["p50"]), _ms(r["p95"]), _ms(r["p99"])]
        if wide:
            row += [_pct(r["share"]), r["backends"] or "-"]
        rows.append(row)
    print(output.render_table(headers, rows), end="")
    return 0


@reports_errors
def authz(args: argparse.Namespace) -> int:
    body = _service_report(args, "/api/v1/authz")
    if body is None:
        return 0
    # AUDITED only where an AUDIT policy applies (the table is otherwise as it was)
    audits = any(r["action"] == "AUDIT" for r in body["rows"])
    rows = [(r["policy"], r["action"] or "-", "yes" if r["dryRun"] else "no",
             _decided(r, "allowed"), _decided(r, "denied"),
             *((_decided(r, "audited"),) if audits else ()), f"{r['rps']:.1f}")
            for r in body["rows"]]
    headers = ("POLICY", "ACTION", "DRY-RUN", "ALLOWED", "DENIED",
               *(("AUDITED",) if audits else ()), "RPS")
    print(output.render_table(headers, rows), end="")
    return 0


def _decided(row: dict[str, Any], decision: str) -> str:
    """A row's count of ``decision``; `-` where its policy never makes it (a DENY policy
    allows nothing: it lets the others decide)."""
    makes = {"ALLOW": "allowed", "DENY": "denied", "AUDIT": "audited"}.get(row["action"] or "")
    if row["policy"] == "[none]":
        makes = "denied" if row["action"] == "ALLOW" else "allowed"
    return str(row[decision]) if makes == decision else "-"


def _security(edge: dict[str, Any]) -> str:
    if edge.get("mtlsShare") is None and edge.get("tcpConnections") is None:
        return "-"  # every request was answered by the caller's sidecar
    return "🔒 mTLS" if edge["secured"] else "plaintext"


@reports_errors
def top(args: argparse.Namespace) -> int:
    client = make_client(args)
    while True:
        body = _get(client, "/api/v1/top", service=args.service, seconds=str(args.interval))
        rows = [(r["destination"], r["method"], r["path"], str(r["count"]),
                 _pct(r["successRate"]), _ms(r["best"]), _ms(r["worst"]))
                for r in body["rows"][: args.limit]]
        table = output.render_table(("DESTINATION", "METHOD", "PATH", "COUNT", "SUCCESS",
                                     "BEST", "WORST"), rows)
        if args.once:
            print(table, end="")
            return 0
        print("\x1b[2J\x1b[H" + f"meshctl top {args.service} (every {args.interval}s, "
              "Ctrl-C to stop)\n" + table, flush=True)


def _sse(client: ControlPlaneClient, path: str) -> Iterator[dict[str, Any]]:
    headers = {"Accept": "text/event-stream"}
    if client.token:
        headers["Authorization"] = f"Bearer {client.token}"
    req = urllib.request.Request(client.base_url + path, headers=headers)
    try:
        resp = client.urlopen(req, None)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            message = json.loads(raw)["error"]
        except (ValueError, KeyError, TypeError):
            message = client.not_the_api(exc.code)
        raise SystemExit(f"error: {message}") from None
    with resp:
        for line in resp:
            if line.startswith(b"data: "):
                yield json.loads(line[6:])


@reports_errors
def tap(args: argparse.Namespace) -> int:
    query = urlencode({k: v for k, v in (("service", args.service), ("path", args.path),
                                         ("method", args.method), ("n", args.n)) if v})
    for e in _sse(make_client(args), f"/api/v1/tap?{query}"):
        if args.output == "json":
            print(json.dumps(e), flush=True)
            continue
        lock = "🔒" if e.get("tls") == "mutual_tls" else "  "
        if e.get("protocol") == "TCP":  # one connection, at its end
            what = (f"TCP :received={e['bytes_received']}B sent={e['bytes_sent']}B "
                    f"duration={e['duration_ms']:.1f}ms")
        else:
            what = (f"{e['method']} {e['path']} :status={e['status']}{_grpc(e)} "
                    f"latency={e['duration_ms']:.1f}ms")
        print(f"{lock} {e['proxy']:<24} {e['source']} -> {e['destination']}"
              f"({e.get('destination_version', '?')}) {what} reason={e['reason']}", flush=True)
    return 0


def _grpc(event: dict[str, Any]) -> str:
    """` grpc-status=N` for a gRPC call (as Linkerd's tap shows it), else nothing."""
    status = event.get("grpc_status")
    return f" grpc-status={status}" if status is not None else ""


MARKS = {"ok": "✔", "warn": "‼", "fail": "✘"}


@reports_errors
def check(args: argparse.Namespace) -> int:
    client = make_client(args)
    worst = "ok"
    print("Control plane")
    body, problem, hint = _check_answer(client)
    if body is None:
        print(f"  {MARKS['fail']} control plane reachable at {client.base_url}: {problem}"
              + (f"\n    hint: {hint}" if hint else ""))
        return 1
    print(f"  {MARKS['ok']} control plane reachable at {client.base_url}")
    # The control plane's own group (how its API is served) goes under the line above.
    groups = sorted(body["groups"], key=lambda g: g["title"] != "Control plane")
    for i, group in enumerate(groups):
        if group["title"] != "Control plane" or i:
            print(group["title"])
        for c in group["checks"]:
            detail = f": {c['detail']}" if c["detail"] else ""
            print(f"  {MARKS[c['state']]} {c['name']}{detail}")
            if c["hint"]:
                print(f"    hint: {c['hint']}")
            if c["state"] == "fail" or (c["state"] == "warn" and worst == "ok"):
                worst = c["state"]
    print({"ok": "All checks passed.", "warn": "Passed with warnings.",
           "fail": "Some checks failed."}[worst])
    return 1 if worst == "fail" else 0


def _check_answer(client: ControlPlaneClient) -> tuple[Any, str, str]:
    """``GET /api/v1/check``'s groups, or (None, what went wrong, a hint): every way of not
    getting them (nothing listening, another service or protocol at the address, an error
    answer) is the ✘ line of the first check, not an ``error:`` line under its title."""
    start = "start it with `meshctl serve`, or pass --control-plane URL"
    try:
        status, body = request_json(client, "GET", "/api/v1/check")
    except urllib.error.URLError as exc:
        found = unreachable_hint(client.base_url, exc.reason)
        return None, str(exc.reason), found[2:] if found else start
    except (TimeoutError, ConnectionError) as exc:
        found = unreachable_hint(client.base_url, exc)
        return None, str(exc) or type(exc).__name__, found[2:] if found else start
    except http.client.HTTPException as exc:
        return None, not_http(client.base_url, exc), ""
    if status == 200:
        if isinstance(body, dict) and isinstance(body.get("groups"), list):
            return body, "", ""
        return None, client.not_the_api(status), ""
    if status == 404 and (not body or body.get("error") in (None, "Not Found")):
        return None, "it does not serve /api/v1/check", (
            "observability is not enabled in this `meshctl serve`")
    return None, error_text(body) if body else f"HTTP {status}", ""


def dashboard(args: argparse.Namespace) -> int:
    url = make_client(args).base_url.rstrip("/") + "/dashboard"
    print(url)
    if args.open and not webbrowser.open(url):
        # a server over ssh has no browser: say so rather than appear to have opened one
        port = urllib.parse.urlsplit(url).port or 80
        print("meshctl dashboard: no web browser could be started here; open the URL above "
              f"in one (over ssh: ssh -L {port}:127.0.0.1:{port} HOST, then the URL)",
              file=sys.stderr)
    return 0


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register stat, edges, routes, authz, top, tap, check and dashboard."""
    def command(name: str, summary: str, more: str = "",
                lead: str = "") -> argparse.ArgumentParser:
        # `--help` says what the command does too, not only its options
        lead = lead or f"{summary[0].upper()}{summary[1:]}."
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, help=summary, description=f"{lead} {more}".strip())
        return parser

    p = command("stat", "success rate, RPS, latency and TCP connections per service version",
                "SERVICE (and --from): a service the mesh knows, else exit 1 naming the close "
                "ones (docs/observability.md).")
    p.add_argument("service", nargs="?", metavar="SERVICE")
    p.add_argument("--from", dest="source", metavar="SERVICE", help="only calls from SERVICE")
    p.add_argument("--window", default="30s", type=window_arg,
                   help="e.g. 30s, 5m (default 30s)")
    p.add_argument("-o", "--output", choices=("table", "wide", "json"), default="table",
                   help="wide: also TCP bytes/s read and written")
    p.set_defaults(func=stat)
    p = command("edges", "who calls whom, and whether the edge is mTLS",
                "One row per caller and callee version, as the callers' sidecars count them.")
    p.add_argument("--window", default="30s", type=window_arg,
                   help="e.g. 30s, 5m (default 30s)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=edges)
    p = command("routes", "success rate, RPS and latency per named rule of a service's Routes "
                "(callers' side)", "The rest of its requests are one [unnamed] row.")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("-n", "--namespace", default="default", help="the service's namespace")
    p.add_argument("--window", default="30s", type=window_arg,
                   help="e.g. 30s, 5m (default 30s)")
    p.add_argument("-o", "--output", choices=("table", "wide", "json"), default="table",
                   help="wide: also each row's share of the requests and the rule's backends")
    p.set_defaults(func=routes)
    p = command("authz", "requests allowed and denied per AuthorizationPolicy of a service",
                "Dry-run policies count what they would have decided; [none]: requests no "
                "policy's rule decided (docs/observability.md).")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("-n", "--namespace", default="default", help="the service's namespace")
    p.add_argument("--window", default="30s", type=window_arg,
                   help="e.g. 30s, 5m (default 30s)")
    p.add_argument("-o", "--output", choices=("table", "json"), default="table")
    p.set_defaults(func=authz)
    p = command("top", "a live view of a service's busiest paths",
                "Needs the API token (AMI_TOKEN or .ami/token), as tap does.")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--interval", type=interval_arg, default=2.0,
                   help="seconds per refresh (default 2)")
    p.add_argument("--limit", type=int, default=20, help="paths shown (default 20)")
    p.add_argument("--once", action="store_true", help="print one table and exit")
    p.set_defaults(func=top)
    p = command("tap", "stream live requests (and TCP connections, as they end) to and from a "
                "service", "Needs the API token (AMI_TOKEN or .ami/token). No headers are shown.")
    p.add_argument("service", metavar="SERVICE")
    p.add_argument("--path", default="", help="path prefix")
    p.add_argument("--method", default="", help="only this HTTP method")
    p.add_argument("-n", type=int, default=0,
                   help="stop after N requests (default: until Ctrl-C)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=tap)
    p = command("check", "is the mesh healthy? grouped checks with hints",
                "✔ ok, ‼ warning, ✘ failure; exit 1 on a failure.",
                lead="Is the mesh healthy? Grouped checks, with a hint under each problem.")
    p.set_defaults(func=check)
    p = command("dashboard", "print (and --open) the dashboard URL")
    p.add_argument("--open", action="store_true", help="also open it in a browser")
    p.set_defaults(func=dashboard)

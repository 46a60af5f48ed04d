"""``meshctl version``: the client's version, the control plane's, and the proxies' (as
``istioctl version``)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from meshctl.api.build import BUILD, VERSION


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``version`` command."""
    p = subparsers.add_parser(
        "version", help="print the versions of meshctl, the control plane and the proxies",
        description="Print meshctl's version, then the control plane's and how many connected "
                    "proxies run each version (GET /api/v1/version).")
    p.add_argument("--short", action="store_true",
                   help="print meshctl's version number only, without asking the control plane")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.set_defaults(func=run_version)


def proxies_text(data_plane: list[dict[str, Any]]) -> str:
    """``0.2.0 (5 proxies), 0.1.0 (1 proxy)``; ``none`` without a connected proxy."""
    return ", ".join(f"{d['version']} ({d['proxies']} prox{'y' if d['proxies'] == 1 else 'ies'})"
                     for d in data_plane) or "none (no proxy connected)"


def run_version(args: argparse.Namespace) -> int:
    """Print the versions; 1 if the control plane cannot be asked (the client's still printed)."""
    if args.short:
        print(VERSION)
        return 0
    # imported here: the client (and its store module) is not needed for --short
    from meshctl.commands.calls import make_client, reports_errors, request_json

    client_part = {"version": VERSION, "build": BUILD}
    if args.output == "text":
        print(f"client version: {VERSION}", flush=True)

    @reports_errors
    def remote(args: argparse.Namespace) -> int:
        client = make_client(args)
        status, body = request_json(client, "GET", "/api/v1/version")
        if status == 404 and isinstance(body, dict) and body.get("reason") == "NotFound":
            # the API's own 404: a control plane from before the version API
            body = {"version": "unknown", "build": None, "dataPlane": None}
        elif status != 200 or not isinstance(body, dict) or not isinstance(
                body.get("version"), str) or not isinstance(body.get("dataPlane"), list):
            message = body.get("error") if isinstance(body, dict) else None
            raise SystemExit(f"error: {message or client.not_the_api(status)}")
        if args.output == "json":
            print(json.dumps({"client": client_part,
                              "controlPlane": {"version": body["version"],
                                               "build": body.get("build")},
                              "dataPlane": body.get("dataPlane")}, indent=2))
            return 0
        print(f"control plane version: {body['version']}")
        if body.get("dataPlane") is None:
            print("data plane version: unknown (the control plane does not report it: older "
                  "than this meshctl)")
        else:
            print(f"data plane version: {proxies_text(body['dataPlane'])}")
        return 0

    code = remote(args)
    if code and args.output == "json":
        print(json.dumps({"client": client_part, "controlPlane": None, "dataPlane": None},
                         indent=2))
    return code

"""What every command that talks to the control plane shares: its client, JSON calls, one
error line for any failure (with a hint when the address is wrong), and the kinds' names."""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from meshctl.addrprobe import address_hint
from meshctl.api.kindnames import ISTIO_STORED_AS, KIND_PLURALS, kind_for
from meshctl.client import (
    ControlPlaneClient,
    ControlPlaneError,
    not_http,
    resolve_control_plane,
)
from meshctl.controlplane.auth import load_client_token

SHORT_NAMES = {"rt": "Route", "dp": "DestinationPolicy", "ap": "AuthorizationPolicy",
               "ra": "RequestAuthentication", "pa": "PeerAuthentication", "mc": "MeshConfig",
               "gw": "Gateway", "es": "ExternalService", "tel": "Telemetry",
               "sc": "Sidecar", "can": "Canary"}
_SHORT_BY_KIND = {kind: short for short, kind in SHORT_NAMES.items()}
# every kind the CLI takes, as help and errors list it: built from the kinds' registry so that a
# new kind (HTTPRoute, GRPCRoute) is never missing from the list
KIND_HELP = ", ".join(f"{kind.lower()}|{_SHORT_BY_KIND[kind]}" if kind in _SHORT_BY_KIND
                      else kind.lower() for kind in KIND_PLURALS)
Command = Callable[[argparse.Namespace], int]
ALL = "all"  # `get all`: every kind (meshctl.commands.getall)
SERVICE = "Service"  # `describe service`: not a stored kind (meshctl.commands.servicepage)


def resolve_kind(word: str) -> str:
    """The canonical kind for a singular, plural or short name (any case)."""
    kind = kind_for(word) or SHORT_NAMES.get(word.lower())
    if kind is None and word.lower() in ISTIO_STORED_AS:
        istio, stored = ISTIO_STORED_AS[word.lower()]
        raise argparse.ArgumentTypeError(
            f"unknown kind {word!r}: an Istio {istio} is stored as the {stored} it is "
            f"translated into; use {KIND_PLURALS[stored]}")
    if kind is None:
        raise argparse.ArgumentTypeError(f"unknown kind {word!r}; expected one of {KIND_HELP}")
    return kind


def object_ref(kind: str, name: str) -> str:
    """``route.ami.mesh/reviews``: how kubectl-style output names an object."""
    return f"{kind.lower()}.ami.mesh/{name}"


def make_client(args: argparse.Namespace) -> ControlPlaneClient:
    return ControlPlaneClient(resolve_control_plane(args.control_plane), load_client_token(),
                              ca_file=getattr(args, "ca_file", None))


def request_json(client: ControlPlaneClient, method: str, path: str, body: Any = None,
                 timeout: float | None = None) -> tuple[int, Any]:
    """(HTTP status, decoded JSON body) whatever the status; for endpoints whose error
    answers carry data (``/api/v1/sync``'s 504) or may not exist yet (404)."""
    headers = {"Accept": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    if client.token:
        headers["Authorization"] = f"Bearer {client.token}"
    req = urllib.request.Request(client.base_url + path, data=data, method=method,
                                 headers=headers)
    try:
        with client.urlopen(req, timeout or client.timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:  # an HTML page, another service: say so in one line, not the page
        return status, {"error": client.not_the_api(status)}


def reports_errors(command: Command, failure: int = 1) -> Command:
    """Turn API and connection errors into one ``error: ...`` line on stderr and exit
    ``failure`` (1; ``meshctl diff``: 2, as 1 there means differences)."""
    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except BrokenPipeError:
            raise  # our stdout was closed (`| head`): not the control plane's fault; see cli
        except ControlPlaneError as exc:
            print(f"error: {exc}", file=sys.stderr)
        except urllib.error.URLError as exc:
            url = resolve_control_plane(args.control_plane)
            print(f"error: cannot reach the control plane at {url}: {exc.reason}"
                  f"{unreachable_hint(url, exc.reason)}", file=sys.stderr)
        except (TimeoutError, ConnectionError) as exc:
            url = resolve_control_plane(args.control_plane)
            print(f"error: control plane did not answer: {exc}{unreachable_hint(url, exc)}",
                  file=sys.stderr)
        except http.client.HTTPException as exc:  # another protocol's port (SSH, a database)
            print(f"error: {not_http(resolve_control_plane(args.control_plane), exc)}",
                  file=sys.stderr)
        return failure
    return run


def unreachable_hint(url: str, reason: object) -> str:
    """What to do about a failed connection to ``url``: when something answered but not as
    the API (a TLS error, a connection closed or reset), what it is (the gRPC port, HTTPS
    asked in plain HTTP or the reverse: meshctl.addrprobe) and the address to use instead."""
    if isinstance(reason, TimeoutError | ConnectionRefusedError) or not isinstance(
            reason, ssl.SSLError | ConnectionError):
        return ""
    hint = address_hint(url)
    if hint:
        return hint
    if isinstance(reason, ssl.SSLCertVerificationError):
        return ("; give the mesh trust bundle (certs/trust-bundle.pem) with --ca-file or "
                "AMI_CA_FILE")
    if isinstance(reason, ConnectionError) and url.startswith("http://"):
        return f"; if it serves HTTPS (--api-tls), use https://{url[7:]}"
    return ""


def error_text(answer: Any) -> str:
    return str(answer.get("error", answer)) if isinstance(answer, dict) else str(answer)

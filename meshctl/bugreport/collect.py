"""Ask the control plane's HTTP API for everything a bug report holds, each call with a deadline."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from meshctl import output
from meshctl.api.kindnames import KIND_PLURALS
from meshctl.bugreport.redact import Redactor
from meshctl.client import ControlPlaneClient, not_http

MAX_ANSWER = 64 << 20  # bytes read from one answer (a config dump is at most 16 MiB)
CHUNK = 1 << 16
DUMP_WORKERS = 4  # config dumps asked at once: a hung sidecar holds one, not the report


class Unreachable(Exception):
    """The control plane did not answer, or is not the Ami API: there is no report to make."""


class CallFailed(Exception):
    """One call did not give its part; the report records the message and goes on."""


@dataclass
class Options:
    timeout: float = 10.0  # seconds for one call, connect to last byte
    window: str = "10m"  # stat and edges: the control plane keeps up to 10 minutes
    service: str | None = None
    config_dumps: bool = False


@dataclass
class Collected:
    """The members (archive path → redacted bytes), the decoded answers the summary reads,
    and one line per part that could not be had."""

    members: dict[str, bytes] = field(default_factory=dict)
    answers: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Collector:
    """Calls the API with ``client``'s URL, TLS and token; redacts before anything is kept."""

    def __init__(self, client: ControlPlaneClient, options: Options,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.options = options
        self.clock = clock
        self.redactor = Redactor([client.token])
        self.out = Collected()

    def fetch(self, path: str) -> tuple[int, bytes]:
        """(status, body) of ``GET path``, error statuses included; the whole call within
        ``options.timeout`` (checked between reads; each read is bounded by it too)."""
        headers = {"Accept": "application/json, text/plain"}
        if self.client.token:
            headers["Authorization"] = f"Bearer {self.client.token}"
        req = urllib.request.Request(self.client.base_url + path, headers=headers)
        deadline = self.clock() + self.options.timeout
        try:
            resp = self.client.urlopen(req, self.options.timeout)
        except urllib.error.HTTPError as exc:
            resp = exc
        with resp:
            status, parts, size = resp.status or 0, [], 0
            while chunk := resp.read(CHUNK):
                parts.append(chunk)
                size += len(chunk)
                if size > MAX_ANSWER:
                    raise CallFailed(f"the answer is larger than {MAX_ANSWER >> 20} MiB")
                if self.clock() > deadline:
                    raise TimeoutError(f"no whole answer within {self.options.timeout:g}s")
        return status, b"".join(parts)

    def get_json(self, path: str) -> tuple[int, Any]:
        """Like fetch, decoded; an answer that is not JSON is not the control plane's."""
        status, raw = self.fetch(path)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            raise CallFailed(self.client.not_the_api(status)) from None

    def part(self, name: str, path: str, *, ok: tuple[int, ...] = (200,),
             as_yaml: bool = False) -> Any:
        """Fetch ``path`` into member ``name`` (redacted JSON, or a YAML stream of its items);
        on failure one errors.txt line and None."""
        try:
            status, body = self.get_json(path)
            if status not in ok:
                raise CallFailed(_refusal(status, body))
        except (CallFailed, OSError, http.client.HTTPException) as exc:
            self.error(name, path, exc)
            return None
        body = self.redactor.data(body)
        self.out.answers[name] = body
        if as_yaml:
            self.out.members[name] = output.to_yaml_stream(body.get("items") or []).encode()
        else:
            self.out.members[name] = output.to_json(body).encode()
        return body

    def error(self, name: str, path: str, exc: BaseException) -> None:
        message = str(exc) or type(exc).__name__
        if isinstance(exc, urllib.error.URLError):
            message = str(exc.reason)
        self.out.errors.append(self.redactor.text(f"{name}: GET {path}: {message}"))

    def version(self) -> dict[str, Any]:
        """The first call: it tells whether there is a control plane at all (else Unreachable)."""
        try:
            status, body = self.get_json("/api/v1/version")
        except CallFailed as exc:
            raise Unreachable(str(exc)) from None
        except urllib.error.URLError as exc:
            raise Unreachable(f"cannot reach the control plane at {self.client.base_url}: "
                              f"{exc.reason}") from None
        except OSError as exc:  # refused, reset, timed out
            raise Unreachable(f"the control plane at {self.client.base_url} did not answer: "
                              f"{str(exc) or type(exc).__name__}") from None
        except http.client.HTTPException as exc:  # another protocol's port
            raise Unreachable(not_http(self.client.base_url, exc)) from None
        if status != 200 or not isinstance(body, dict) or "version" not in body:
            raise Unreachable(_refusal(status, body) if isinstance(body, dict) and
                              body.get("error") else self.client.not_the_api(status))
        redacted: dict[str, Any] = self.redactor.data(body)
        self.out.answers["version.json"] = redacted
        self.out.members["version.json"] = output.to_json(redacted).encode()
        return redacted

    def run(self) -> Collected:
        """Every part; only a control plane that does not answer at all raises (Unreachable)."""
        self.version()
        listed = self.part("proxy-status.json", "/api/v1/proxies") or {}
        proxies = [p for p in listed.get("proxies") or [] if isinstance(p, dict)]
        self.part("sync.json", "/api/v1/sync?timeout=0", ok=(200, 504))
        self.resources(proxies)
        self.part("store-errors.json", "/api/v1/errors")
        self.part("check.json", "/api/v1/check")
        window, service = self.options.window, self.options.service
        self.part("stat.json", "/api/v1/stat?" + _query(window=window, service=service))
        self.part("edges.json", "/api/v1/edges?" + _query(window=window))
        if service:
            self.part(f"routes-{service}.json",
                      "/api/v1/routes?" + _query(window=window, service=service))
        self.metrics()
        chosen = [p for p in proxies if not service or p.get("service") == service]
        for proxy in chosen:
            name = _safe(str(proxy.get("name")))
            self.out.members[f"proxies/{name}/status.json"] = output.to_json(proxy).encode()
        if self.options.config_dumps and chosen:
            with ThreadPoolExecutor(min(DUMP_WORKERS, len(chosen))) as pool:
                for done in [pool.submit(self.config_dump, str(p.get("name"))) for p in chosen]:
                    done.result()  # (part() records its own failures; anything else is a bug)
        self.out.members = dict(sorted(self.out.members.items(), key=_order))
        self.out.errors.sort()  # config dumps finish in any order
        return self.out

    def resources(self, proxies: list[dict[str, Any]]) -> None:
        """Every kind in every namespace (``GET /api/v1/<plural>``)."""
        namespaces = {"default", *(str(p.get("namespace") or "default") for p in proxies)}
        for kind, plural in KIND_PLURALS.items():
            if kind == "Route":
                continue  # last: it needs the namespaces the others name
            body = self.part(f"resources/{plural}.yaml", f"/api/v1/{plural}", as_yaml=True)
            namespaces |= {str((o.get("metadata") or {}).get("namespace") or "default")
                           for o in (body or {}).get("items") or []}
        # GET /api/v1/routes is also the route-metrics endpoint, which answers it (400, no
        # service=): where it does not list RouteList, Routes are listed per namespace known.
        name, path = "resources/routes.yaml", "/api/v1/routes"
        try:
            status, body = self.get_json(path)
        except (CallFailed, OSError, http.client.HTTPException):
            status, body = 0, None
        if status == 200 and isinstance(body, dict) and body.get("kind") == "RouteList":
            items = body.get("items") or []
        else:
            items = []
            self.out.answers["route namespaces"] = sorted(namespaces)  # for the summary
            for ns in sorted(namespaces):
                listed = self.part(name, f"/api/v1/namespaces/{urllib.parse.quote(ns)}/routes")
                items += (listed or {}).get("items") or []
        items = self.redactor.data(items)
        self.out.answers[name] = {"items": items}
        self.out.members[name] = output.to_yaml_stream(items).encode()

    def metrics(self) -> None:
        name, path = "controlplane-metrics.txt", "/metrics"
        try:
            status, raw = self.fetch(path)
            if status != 200:
                raise CallFailed(f"HTTP {status}")
        except (CallFailed, OSError, http.client.HTTPException) as exc:
            self.error(name, path, exc)
            return
        self.out.members[name] = self.redactor.text(raw.decode("utf-8", "replace")).encode()

    def config_dump(self, proxy: str) -> None:
        """One sidecar's running config (privileged: the API token); the control plane gives
        up on a sidecar that does not answer (502), and this call has its own deadline."""
        self.part(f"proxies/{_safe(proxy)}/config_dump.json",
                  f"/api/v1/proxies/{urllib.parse.quote(proxy, safe='')}/config_dump")


def _refusal(status: int, body: Any) -> str:
    message = body.get("error") if isinstance(body, dict) else None
    if status == 401:
        # (the control plane's own words name where the token goes; older ones may not)
        hint = "" if "AMI_TOKEN" in str(message) else " (give the API token: AMI_TOKEN or " \
            ".ami/token)"
        return f"HTTP 401: {message or 'unauthorized'}{hint}"
    if status == 404 and (message in (None, "Not Found")):
        return "HTTP 404: this control plane does not serve it (observability not enabled?)"
    return f"HTTP {status}: {message or body}"


def _query(**params: str | None) -> str:
    return urllib.parse.urlencode({k: v for k, v in params.items() if v})


def _safe(name: str) -> str:
    """A proxy name as one path component of the archive."""
    return "".join(c if c.isalnum() or c in "-_.:" else "_" for c in name).lstrip(".") or "_"


def _order(item: tuple[str, bytes]) -> tuple[int, str]:
    """Top-level files first, then resources/, then proxies/ (a listing reads top-down)."""
    path = item[0]
    return (path.count("/") + path.startswith("proxies/"), path)

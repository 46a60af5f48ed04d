"""The CLI's HTTP client for the control plane API (sync, stdlib urllib)."""

from __future__ import annotations

import http.client
import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshctl.api.kindnames import KIND_PLURALS, kind_for

DEFAULT_CONTROL_PLANE = "http://127.0.0.1:15080"


def resolve_control_plane(arg: str | None, env: Mapping[str, str] | None = None) -> str:
    """The API base URL: ``--control-plane``, else ``$AMI_CONTROL_PLANE``, else the default."""
    env = os.environ if env is None else env
    url = arg or env.get("AMI_CONTROL_PLANE") or DEFAULT_CONTROL_PLANE
    return url if "://" in url else f"http://{url}"


def resolve_ca_file(arg: str | None, env: Mapping[str, str] | None = None,
                    cwd: Path | None = None) -> str | None:
    """The roots an ``https://`` control plane is verified with: ``--ca-file``, else
    ``$AMI_CA_FILE``, else ``./certs/trust-bundle.pem`` (the mesh CA's, as ``meshctl certs
    init`` writes it), else None: the system's roots (an ``--api-cert`` from a public CA)."""
    env = os.environ if env is None else env
    if arg or env.get("AMI_CA_FILE"):
        return arg or env["AMI_CA_FILE"]
    bundle = (cwd or Path.cwd()) / "certs" / "trust-bundle.pem"
    return str(bundle) if bundle.is_file() else None


def client_ssl_context(ca_file: str | None) -> ssl.SSLContext:
    """TLS 1.2 or later, the server's name checked, against ``ca_file`` or the system roots."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def not_http(url: str, exc: http.client.HTTPException) -> str:
    """What to say when ``url`` answered, but not in HTTP (SSH's port, a database's)."""
    return (f"{url} answered, but not in HTTP ({type(exc).__name__}: {str(exc)[:80]!r}); is "
            "it the control plane's --listen address (--control-plane, AMI_CONTROL_PLANE)?")


class ControlPlaneError(Exception):
    """An error answer from the API: HTTP status, reason word and the precise message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WatchEvent:
    """One server-sent event: ``type`` (ADDED, MODIFIED, DELETED, ERROR) and its JSON data."""

    type: str
    data: dict[str, Any]


def _plural(kind: str) -> str:
    canonical = kind_for(kind)
    if canonical is None:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KIND_PLURALS)}")
    return KIND_PLURALS[canonical]


class ControlPlaneClient:
    """Talks to ``meshctl serve``; writes send ``token`` as a bearer token."""

    def __init__(self, base_url: str, token: str | None = None, timeout: float = 10.0,
                 ca_file: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.ssl_context = (client_ssl_context(resolve_ca_file(ca_file))
                            if self.base_url.startswith("https://") else None)

    def urlopen(self, req: urllib.request.Request, timeout: float | None) -> Any:
        """``urllib.request.urlopen`` with this client's TLS settings (for https:// URLs)."""
        return urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context)

    def _open(self, method: str, path: str, body: bytes | None = None,
              content_type: str = "application/json", timeout: float | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base_url + path, data=body, method=method,
                                     headers=headers)
        try:
            return self.urlopen(req, timeout or self.timeout)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                err = json.loads(raw)
                raise ControlPlaneError(exc.code, err["reason"], err["error"]) from None
            except (ValueError, KeyError, TypeError):
                raise ControlPlaneError(exc.code, "Error", self.not_the_api(exc.code)) from None

    def not_the_api(self, status: int) -> str:
        """What to say when ``base_url`` answers, but not as the control plane's API would
        (an HTML page, another service's port)."""
        return (f"{self.base_url} answered HTTP {status} but not as the Ami control plane API "
                "does; is it the control plane's --listen address (--control-plane, "
                "AMI_CONTROL_PLANE)?")

    def field(self, answer: dict[str, Any], key: str, kind: type) -> Any:
        """``answer[key]``, which must be a ``kind``; else the base URL is not the API."""
        value = answer.get(key)
        if not isinstance(value, kind):
            raise ControlPlaneError(200, "Error", self.not_the_api(200))
        return value

    def _json(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        with self._open(method, path, data) as resp:
            try:
                answer = json.loads(resp.read())
            except ValueError:
                raise ControlPlaneError(resp.status, "Error",
                                        self.not_the_api(resp.status)) from None
        if not isinstance(answer, dict):
            raise ControlPlaneError(resp.status, "Error", self.not_the_api(resp.status))
        return answer

    def apply(
        self, docs: str | list[dict[str, Any]], source: str | None = None
    ) -> list[dict[str, Any]]:
        """Apply YAML text or documents; each result says created, configured or unchanged."""
        query = "?" + urllib.parse.urlencode({"source": source}) if source else ""
        if isinstance(docs, str):
            body, ctype = docs.encode(), "application/yaml"
        else:
            body, ctype = json.dumps(docs).encode(), "application/json"
        with self._open("POST", f"/api/v1/apply{query}", body, ctype) as resp:
            return list(json.loads(resp.read())["results"])

    def get(self, kind: str, name: str | None = None,
            namespace: str | None = "default") -> Any:
        """One object (with ``name``), else the list in ``namespace`` (None: all namespaces)."""
        plural = _plural(kind)
        if name is None:
            path = (f"/api/v1/{plural}" if namespace is None
                    else f"/api/v1/namespaces/{_q(namespace)}/{plural}")
            return self.field(self._json("GET", path), "items", list)
        ns = _q(namespace or "default")
        return self._json("GET", f"/api/v1/namespaces/{ns}/{plural}/{_q(name)}")

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        ns = doc.get("metadata", {}).get("namespace", "default")
        result: dict[str, Any] = self._json(
            "POST", f"/api/v1/namespaces/{_q(ns)}/{_plural(doc['kind'])}", doc)
        return result

    def update(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Replace an object; a ``metadata.resourceVersion`` in ``doc`` makes it conditional."""
        meta = doc.get("metadata", {})
        path = (f"/api/v1/namespaces/{_q(meta.get('namespace', 'default'))}/"
                f"{_plural(doc['kind'])}/{_q(meta['name'])}")
        result: dict[str, Any] = self._json("PUT", path, doc)
        return result

    def delete(self, kind: str, name: str, namespace: str = "default",
               resource_version: str | None = None) -> dict[str, Any]:
        query = f"?resourceVersion={_q(resource_version)}" if resource_version else ""
        path = f"/api/v1/namespaces/{_q(namespace)}/{_plural(kind)}/{_q(name)}{query}"
        result: dict[str, Any] = self._json("DELETE", path)
        return result

    def errors(self) -> list[dict[str, Any]]:
        """Hand edits the control plane rejected (source, precise message, objects)."""
        return list(self.field(self._json("GET", "/api/v1/errors"), "items", list))

    def watch(self, kind: str | None = None, namespace: str | None = None,
              replay: bool = False, timeout: float | None = None
              ) -> Generator[WatchEvent, None, None]:
        """Events as they happen; the iterator is ready once the first event or comment arrives.

        ``timeout`` bounds each read (the server sends a keep-alive comment every 15 s).
        """
        with self.open_watch(kind, namespace, replay=replay, timeout=timeout) as resp:
            yield from watch_events(resp)

    def open_watch(self, kind: str | None = None, namespace: str | None = None, *,
                   replay: bool = False, status: bool = False,
                   timeout: float | None = None) -> Any:
        """The open ``/api/v1/watch`` response (subscribed once this returns: a list read
        after it misses no change); ``status``: status changes too, objects with status."""
        params = {k: v for k, v in (("kind", kind), ("namespace", namespace),
                                    ("replay", "true" if replay else None),
                                    ("status", "true" if status else None)) if v}
        query = "?" + urllib.parse.urlencode(params) if params else ""
        return self._open("GET", f"/api/v1/watch{query}", timeout=timeout)


def watch_events(resp: Iterable[bytes]) -> Iterator[WatchEvent]:
    """The server-sent events of an open watch response, until the stream ends."""
    event, data = "message", list[str]()
    for raw in resp:
        line = raw.decode().rstrip("\r\n")
        if not line:
            if data:
                yield WatchEvent(event, json.loads("\n".join(data)))
            event, data = "message", list[str]()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def _q(part: str) -> str:
    return urllib.parse.quote(part, safe="")

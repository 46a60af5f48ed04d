"""Shared fixture pieces for observability tests: static proxies, a backend, an API with observe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meshctl.api.build import VERSION
from meshctl.controlplane.httpapi import create_api_app
from meshctl.controlplane.memstore import MemStore
from meshctl.observe.api import Observer, observe_routes
from tests.proxyharness import Backends, ProxyProcess, echo_app, free_port, snapshot

TOKEN = "observe-test-token"
REPO = Path(__file__).resolve().parent.parent


def static_proxy(tmp: Path, service: str, routes_to: dict[str, list[int]],
                 **snapshot_kw: Any) -> ProxyProcess:
    """A static-mode proxy whose node is ``service`` v1, calling ``routes_to``."""
    tmp.mkdir(parents=True, exist_ok=True)
    proxy = ProxyProcess(tmp, routes_to)
    snap = snapshot(routes_to, outbound=proxy.outbound, admin=proxy.admin, **snapshot_kw)
    snap["node"] = {"service": service, "labels": {"version": "v1"}}
    proxy.config.write_text(yaml.safe_dump(snap))
    return proxy.start()


def sidecar(tmp: Path, service: str, *, app: int | None, services: dict[str, int],
            otlp: int | None = None, sampling: float = 0.0,
            routes: list[dict[str, Any]] | None = None,
            inbound_config: dict[str, Any] | None = None) -> tuple[ProxyProcess, int]:
    """A static-mode sidecar with outbound, inbound (to ``app``; ``inbound_config``: the
    snapshot's `inbound`, e.g. authorization) and admin listeners; returns the running proxy
    and its inbound port."""
    tmp.mkdir(parents=True, exist_ok=True)
    args = ("--otlp-endpoint", f"http://127.0.0.1:{otlp}") if otlp else ()
    proxy = ProxyProcess(tmp, {}, args=args)
    inbound = free_port()
    snap: dict[str, Any] = {
        "version": "t1", "node": {"service": service, "labels": {"version": "v1"}},
        "listeners": {"outbound": f"127.0.0.1:{proxy.outbound}",
                      "admin": f"127.0.0.1:{proxy.admin}", "inbound": f"127.0.0.1:{inbound}"},
        "mesh": {"tracing": {"sampling": sampling}},
        "services": {name: {"endpoints": [{"address": f"127.0.0.1:{p}",
                                           "labels": {"version": "v1"}}]}
                     for name, p in services.items()},
        "routes": routes or [],
    }
    if app is not None:
        snap["app"] = f"127.0.0.1:{app}"
    if inbound_config is not None:
        snap["inbound"] = inbound_config
    proxy.config.write_text(yaml.safe_dump(snap))
    return proxy.start(), inbound


@dataclass
class ObservedMesh:
    """Two static proxies (productpage, reviews), an echo backend and the API on a free port."""

    backends: Backends
    proxies: dict[str, ProxyProcess]
    observer: Observer
    store: MemStore
    url: str
    extra: list[dict[str, Any]] = field(default_factory=list)
    samples: Counter[str] = field(default_factory=Counter)  # scrapes taken, per proxy

    def proxy_list(self) -> dict[str, Any]:
        listed = [{"name": f"{svc}-v1", "service": svc, "version": "v1",
                   "admin": f"127.0.0.1:{p.admin}", "synced": True, "nack": None,
                   "connected": True, "ready": True, "certExpiry": None,
                   "app": "serving", "proxyVersion": VERSION}
                  for svc, p in self.proxies.items()]
        return {"storeVersion": 1, "proxies": listed + self.extra}

    def meshctl(self, *args: str, token: str | None = TOKEN, timeout: float = 30.0
                ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, AMI_TOKEN=token or "", HOME=str(REPO / ".nohome"))
        return subprocess.run([sys.executable, "-m", "meshctl", "--control-plane", self.url,
                               *args], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd="/")

    def wait_scraped(self, passes: int = 1, timeout: float = 10.0) -> None:
        """Until every proxy was scraped ``passes`` more times, each scrape a sample in the
        window: a pass counts for nothing where it failed (a scrape timing out on a loaded
        machine), and the first may have read a proxy before what the test just did (it was
        in flight), so a test that reads what it sent waits for 2."""
        names = [str(p["name"]) for p in self.proxy_list()["proxies"] if p.get("admin")]
        start = {n: self.samples[n] for n in names}
        wait_until(lambda: all(self.samples[n] >= start[n] + passes for n in names), timeout,
                   f"{passes} more scrapes of each of {names} (errors: "
                   f"{self.observer.scraper.errors})")

    def count_samples(self) -> None:
        """Count each scrape the window takes, per proxy (what ``wait_scraped`` waits on)."""
        window = self.observer.scraper.window
        add = window.add

        def counted(proxy: str, scrape: Any) -> None:
            add(proxy, scrape)
            self.samples[proxy] += 1

        window.add = counted  # type: ignore[method-assign]

    def start_observer(self) -> None:
        self.backends.call(_start(self.observer))

    def close(self) -> None:
        for p in self.proxies.values():
            p.stop()
        self.backends.call(self.observer.close())
        self.backends.close()


def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` until truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)  # polling interval of a deadline-bounded wait
    raise AssertionError(f"timed out waiting for {what}")


def start_observed_mesh(tmp: Path, interval: float = 0.3, *, observe: bool = True
                        ) -> ObservedMesh:
    """The mesh, scraped from the start, or, with ``observe=False``, only once
    ``mesh.start_observer()`` is called (or an API request starts it)."""
    backends = Backends()
    echo = backends.aiohttp(echo_app())
    proxies = {
        "productpage": static_proxy(tmp / "pp", "productpage",
                                    {"reviews": [echo], "ratings": [echo]}),
        "reviews": static_proxy(tmp / "rv", "reviews", {"ratings": [echo]}),
    }
    return observe_proxies(backends, proxies, interval, observe=observe)


def observe_proxies(backends: Backends, proxies: dict[str, ProxyProcess], interval: float = 0.3, *,
            observe: bool = True) -> ObservedMesh:
    """The API with observability over ``proxies`` (keyed by the service each one is)."""
    mesh = ObservedMesh(backends, proxies, None, MemStore(), "")  # type: ignore[arg-type]
    mesh.observer = Observer(mesh.proxy_list, interval=interval)
    mesh.count_samples()
    app = create_api_app(mesh.store, token=TOKEN,
                         extra_routes=observe_routes(mesh.observer, token=TOKEN))
    mesh.url = f"http://127.0.0.1:{backends.aiohttp(app)}"
    if observe:
        mesh.start_observer()
    return mesh


async def _start(observer: Observer) -> None:
    observer.ensure_started()


class Traffic:
    """Sends requests in a background thread until stopped (for tap/top, which need a live flow)."""

    def __init__(self, send: Callable[[], object]) -> None:
        self._stop = threading.Event()
        self._send = send
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.03):  # a steady trickle of requests
            self._send()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def send(proxy: ProxyProcess, host: str, path: str) -> int:
    """One GET through the proxy's outbound listener; the status code."""
    req = urllib.request.Request(f"http://127.0.0.1:{proxy.outbound}{path}", headers={"Host": host})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        exc.read()
        return int(exc.code)

"""Real processes: endpoints going away under steady keep-alive load, as a rolling update or a
crash does it. The caller's sidecar must not fail requests for an endpoint that is gone."""

from __future__ import annotations

import http.client
import json
import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import meshbuilder
from tests.helpers_mesh import MeshProcess, http_get, proxies, wait_for
from tests.resources import mesh_config

pytestmark = pytest.mark.timeout(240)
LOADERS = 4



class Mesh(meshbuilder.Mesh):
    """A control plane, three reviews instances (backend + sidecar) and a caller's sidecar."""

    def build(self) -> Mesh:
        self.control_plane(mesh_config(mtls="STRICT"))
        self.reviews: list[MeshProcess] = []
        for i in range(3):
            backend = self.backend(f"reviews-{i}")
            self.reviews.append(self.sidecar("reviews", app=backend.info["address"]))
        self.client = self.sidecar("productpage")
        return self

    def endpoints(self) -> set[str]:
        """The reviews endpoints in the caller's running config."""
        _, body = http_get(f"http://{self.client.info['admin']}/config_dump")
        snapshot = json.loads(body)["snapshot"]
        addresses = (e["address"] for e in snapshot["services"]["reviews"]["endpoints"])
        return {a if isinstance(a, str) else f"{a['host']}:{a['port']}" for a in addresses}



@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(tmp_path_factory.mktemp("lifecycle")) as m:
        m.build().wait_synced()
        wait_for(lambda: len(m.endpoints()) == 3, 20, "three reviews endpoints")
        yield m


class Load:
    """LOADERS threads, each sending GETs on one keep-alive connection to the caller's sidecar."""

    def __init__(self, outbound: str) -> None:
        self.host, port = outbound.rsplit(":", 1)
        self.port = int(port)
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run) for _ in range(LOADERS)]

    def _run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        while not self.stop.is_set():
            try:
                conn.request("GET", "/", headers={"Host": "reviews"})
                resp = conn.getresponse()
                resp.read()
                self.statuses.append(resp.status)
                if resp.status != 200:
                    self.failures.append(f"{resp.status} {resp.getheader('x-ami-reason')}")
            except (OSError, http.client.HTTPException) as exc:
                self.statuses.append(-1)
                self.failures.append(type(exc).__name__)
                conn.close()
                conn = http.client.HTTPConnection(self.host, self.port, timeout=15)
        conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(20)

    def more(self, n: int, timeout: float = 30) -> None:
        seen = len(self.statuses)
        wait_for(lambda: len(self.statuses) >= seen + n, timeout, f"{n} more requests")


def _gone(mesh: Mesh, victim: MeshProcess, sig: int) -> Load:
    inbound = victim.info["inbound"]
    assert inbound in mesh.endpoints()
    with Load(mesh.client.info["outbound"]) as load:
        load.more(200)
        victim.proc.send_signal(sig)
        victim.proc.wait(30)
        load.more(100)
        # The control plane drops the endpoint (stream ended, not ready) and the caller gets
        # a snapshot without it; the load goes on meanwhile.
        wait_for(lambda: inbound not in mesh.endpoints(), 30, "the endpoint removed")
        load.more(100)
    return load


def test_sigterm_of_an_endpoint_under_load_fails_nothing(mesh: Mesh) -> None:
    """A rolling update stops one instance: its sidecar drains and exits; no request fails."""
    load = _gone(mesh, mesh.reviews[0], signal.SIGTERM)
    assert mesh.reviews[0].proc.returncode == 0
    assert load.failures == [], Counter(load.failures)


def test_sigkill_of_an_endpoint_under_load_fails_only_what_it_held(mesh: Mesh) -> None:
    """A crashed sidecar can lose the requests it was serving (at most one per client
    connection), never the ones sent after it died: those go to the live endpoints."""
    load = _gone(mesh, mesh.reviews[1], signal.SIGKILL)
    assert not any("upstream_connect_failure" in f for f in load.failures), \
        Counter(load.failures)
    assert len(load.failures) <= LOADERS, Counter(load.failures)


def test_a_stopped_sidecar_leaves_the_endpoints_at_once_not_after_the_grace(
        tmp_path: Path) -> None:
    """SIGTERM: the sidecar reports "not ready" as its drain starts and ends its stream after
    that, so the control plane drops it from every snapshot at once. The grace (kept for a
    dropped stream that may come back) is 60 s here: waiting it out would fail the wait."""
    with meshbuilder.Mesh(tmp_path) as mesh:
        cp = mesh.control_plane(mesh_config(mtls="DISABLE"), grace=60.0).cp
        victim = mesh.sidecar("reviews", app=mesh.backend("reviews").info["address"])
        caller = mesh.sidecar("productpage")

        def services() -> dict[str, object]:
            _, body = http_get(f"http://{caller.info['admin']}/config_dump")
            return dict(json.loads(body)["snapshot"]["services"])

        def endpoints() -> list[object]:
            reviews = services().get("reviews")
            return list(reviews["endpoints"]) if isinstance(reviews, dict) else []

        wait_for(endpoints, 20, "reviews' endpoint in the caller's config")
        assert victim.stop() == 0
        # The service stays listed while its sidecar is (answering 503 no_healthy_upstream,
        # not 404), but without the endpoint.
        wait_for(lambda: not endpoints(), 20, "reviews' endpoint dropped from the config")
        listed = next(p for p in proxies(cp) if p["name"] == victim.info["name"])
        assert (listed["connected"], listed["ready"]) == (False, False)

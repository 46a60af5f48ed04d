"""One Bookinfo page load through the real demo yields one trace: gateway → productpage → reviews
→ ratings (and details), exported by the sidecars to an in-process OTLP receiver."""

from __future__ import annotations

import shutil
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.otlpreceiver import Receiver
from tests.test_demo_e2e import DIRECT, ROUTES, Demo, _free_block, _free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def traced_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Demo, Receiver]]:
    workdir = tmp_path_factory.mktemp("traced-demo")
    receiver = Receiver()
    receiver.start()
    routes = workdir / "routes"
    shutil.copytree(ROUTES / "default", routes)
    mesh = routes / "mesh.yaml"
    mesh.write_text(mesh.read_text().replace(
        "tracing: {sampling: 1.0}",
        f'tracing: {{sampling: 1.0, otlpEndpoint: "127.0.0.1:{receiver.port}"}}'))
    # reviews v2 calls ratings, so the trace reaches all four services.
    route = routes / "routes.yaml"
    text = route.read_text()
    old = "- {subset: v1, weight: 100}\n        - {subset: v2, weight: 0}"
    new = "- {subset: v1, weight: 0}\n        - {subset: v2, weight: 100}"
    assert old in text
    route.write_text(text.replace(old, new))
    demo = Demo(workdir, _free_port(), _free_port())
    up = demo.meshctl("demo", "up", "--detach", "--no-traffic", "--gateway-port",
                      str(demo.gateway), "--api-port", str(demo.api), "--grpc-port",
                      str(_free_port()), "--base-port", str(_free_block()), "--certs-dir",
                      str(workdir / "certs"), "--routes", str(routes))
    try:
        assert up.returncode == 0, f"demo up failed:\n{up.stdout}\n{up.stderr}"
        yield demo, receiver
    finally:
        demo.meshctl("demo", "down")
        receiver.stop()


def test_one_page_load_is_one_trace_across_the_bookinfo_hops(
        traced_demo: tuple[Demo, Receiver]) -> None:
    """The page load's spans share one trace id and cover every service it went through."""
    demo, receiver = traced_demo
    with DIRECT.open(urllib.request.Request(
            f"http://127.0.0.1:{demo.gateway}/productpage"), timeout=30) as resp:
        page = resp.read().decode()
    assert "Reviews served by: reviews-v2" in page
    wanted = {"gateway", "productpage", "details", "reviews", "ratings"}

    def roots() -> list[str]:
        """The services of spans whose parent has not arrived (the whole trace: the gateway)."""
        with receiver.lock:
            spans = list(receiver.spans)
        known = {s.span_id for _, s in spans}
        return [svc for svc, s in spans if s.parent_span_id not in known]

    # Each process exports its spans in its own batches (1 s interval): a child's may arrive
    # before its parent's, so wait for the whole trace, not only for every service to appear.
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline:
        ids = receiver.trace_ids()
        if (len(ids) == 1 and receiver.services_in(next(iter(ids))) >= wanted
                and roots() == ["gateway"]):
            break
        time.sleep(0.2)  # bounded by the deadline
    ids = receiver.trace_ids()
    assert len(ids) == 1, f"expected one trace, got {len(ids)}"
    assert receiver.services_in(next(iter(ids))) >= wanted
    assert roots() == ["gateway"], roots()  # every other span hangs below the gateway's


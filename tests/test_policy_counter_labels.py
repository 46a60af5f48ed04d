"""Policy counters name a service as the request metrics do.

With two namespaces that both have an `api`, the control plane keys the caller's own
namespace's `api` by its bare name in the snapshot but gives it `metricsName: api.a`, the
`destination_service` of its requests on every sidecar (docs/observability.md). The
dashboard adds the policy counters (retries, ejections, mirrors, authorization denials...) to
the service of that same label, so they must carry `api.a` too, not the snapshot's key `api`,
which would leave them on no service's row. Real proxy processes in static mode with the
snapshot such a push gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web

from tests.ports import free_port
from tests.proxyharness import Backends, ProxyProcess, echo_app, metric_value, roundtrip

pytestmark = pytest.mark.timeout(120)


def _failing_app() -> web.Application:
    async def fail(request: web.Request) -> web.Response:
        return web.Response(status=503, text="down")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fail)
    return app


def _labels(exposition: str, family: str) -> set[str]:
    """The destination_service values of ``family``'s samples."""
    out = set()
    for line in exposition.splitlines():
        if line.startswith(family + "{"):
            out.add(line.split('destination_service="', 1)[1].split('"', 1)[0])
    return out


async def test_outbound_policy_counters_use_the_metrics_name(tmp_path: Path) -> None:
    backends = Backends()
    failing, echo = backends.aiohttp(_failing_app()), backends.aiohttp(echo_app())
    proxy = ProxyProcess(tmp_path, {})
    snap: dict[str, Any] = {
        "version": "t1", "node": {"service": "web", "namespace": "a",
                                  "labels": {"version": "v1"}},
        "listeners": {"outbound": f"127.0.0.1:{proxy.outbound}",
                      "admin": f"127.0.0.1:{proxy.admin}"},
        "services": {
            "api": {"namespace": "a", "metricsName": "api.a", "endpoints": [
                {"address": f"127.0.0.1:{failing}", "labels": {"version": "v1"}}],
                "policy": {"outlierDetection": {"consecutive5xxErrors": 2,
                                                "baseEjectionTime": "30s",
                                                "maxEjectionPercent": 100}}},
            "shadow": {"namespace": "a", "metricsName": "shadow.a", "endpoints": [
                {"address": f"127.0.0.1:{echo}", "labels": {"version": "v1"}}]},
        },
        "routes": [{"host": "api", "rules": [{
            "backends": [{}], "retries": {"attempts": 1, "retryOn": ["5xx"]},
            "mirror": {"service": "shadow"}}]}],
    }
    proxy.config.write_text(yaml.safe_dump(snap))
    proxy.start()
    try:
        for _ in range(3):
            await roundtrip(proxy.outbound, b"GET /x HTTP/1.1\r\nHost: api\r\n\r\n")
        text = await proxy.metrics()
        assert _labels(text, "ami_requests_total") == {"api.a"}
        assert metric_value(text, "ami_retries_total") >= 1
        assert _labels(text, "ami_retries_total") == {"api.a"}
        assert metric_value(text, "ami_outlier_ejections_total") >= 1
        assert _labels(text, "ami_outlier_ejections_total") == {"api.a"}
        assert _labels(text, "ami_mirrored_requests_total") == {"shadow.a"}
    finally:
        proxy.stop()
        backends.close()


async def test_inbound_policy_counters_use_the_node_metrics_name(tmp_path: Path) -> None:
    backends = Backends()
    proxy = ProxyProcess(tmp_path, {})
    inbound = free_port()
    snap: dict[str, Any] = {
        "version": "t1", "node": {"service": "api", "namespace": "a", "metricsName": "api.a",
                                  "labels": {"version": "v1"}},
        "listeners": {"outbound": f"127.0.0.1:{proxy.outbound}",
                      "admin": f"127.0.0.1:{proxy.admin}", "inbound": f"127.0.0.1:{inbound}"},
        "app": f"127.0.0.1:{backends.aiohttp(echo_app())}",
        "inbound": {"authorization": [{"action": "DENY", "rules": [{"to": [{"paths": ["/no"]}]}]}]},
    }
    proxy.config.write_text(yaml.safe_dump(snap))
    proxy.start()
    try:
        assert (await roundtrip(inbound, b"GET /ok HTTP/1.1\r\nHost: api\r\n\r\n")).status == 200
        assert (await roundtrip(inbound, b"GET /no HTTP/1.1\r\nHost: api\r\n\r\n")).status == 403
        text = await proxy.metrics()
        assert _labels(text, "ami_requests_total") == {"api.a"}
        assert _labels(text, "ami_authorization_denied_total") == {"api.a"}
    finally:
        proxy.stop()
        backends.close()

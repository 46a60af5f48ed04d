"""A static sidecar without TLS loads neither cryptography nor grpc: their libraries are most
of a control-plane sidecar's extra memory (~30 MB of RSS), and a plaintext proxy needs none of
it (the RSS target in the benchmark is for this proxy). An import that slips one in (as a
module-level `from proxy.tls import ...` did once) shows here, in the running process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxyharness import ProxyProcess, get, roundtrip


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, echo: int) -> Iterator[ProxyProcess]:
    p = ProxyProcess(tmp_path_factory.mktemp("footprint"), {"echo": [echo]}).start()
    yield p
    p.stop()


def loaded_libraries(pid: int) -> set[str]:
    """File names of the shared objects mapped into process ``pid``."""
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if line.rstrip().endswith(".so") or ".so." in line}


async def test_a_plaintext_static_sidecar_maps_no_tls_or_grpc_library(
        proxy: ProxyProcess) -> None:
    resp = await roundtrip(proxy.outbound, get("echo", "/"))  # a request served first
    assert resp.status == 200
    assert proxy.proc is not None
    libraries = loaded_libraries(proxy.proc.pid)
    assert any("uvloop" in lib for lib in libraries)  # (the check sees the proxy's modules)
    heavy = sorted(lib for lib in libraries
                   if "/cryptography/" in lib or "/grpc/" in lib or "opentelemetry" in lib)
    assert heavy == []

"""The in-process micro benchmark drives the real protocols; each request must get a 200."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.micro import COOKIE_REQUEST, measure, parse_refs
from proxy.policy.sticky import endpoint_token

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("variant", ["plain", "features", "inbound", "named", "mtls", "h2",
                                     "cookie", "authz", "authzdry"])
async def test_each_variant_completes_requests(variant: str) -> None:
    result = await measure(variant, requests=300, repeats=2)
    assert result.variant == variant
    assert 0 < result.us_per_request < 10_000


def test_the_cookie_variant_names_its_endpoint() -> None:
    """Its cookie is the token of its one endpoint: the steady state of a browser, nothing to
    set on the answer (a stale token would measure the re-pinning path instead)."""
    assert f"sticky={endpoint_token('127.0.0.1:9')};".encode() in COOKIE_REQUEST


async def test_h2_variant_checks_its_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The h2 variant fails loudly when the answers do not come back through the proxy (a
    server answering streams the proxy never opened)."""
    from bench import microh2

    real = microh2.Peer.batch

    def misnumbered(self: microh2.Peer, count: int) -> bytes:
        if self.body is not None:
            self.next_id += 2
        return real(self, count)

    monkeypatch.setattr(microh2.Peer, "batch", misnumbered)
    with pytest.raises(RuntimeError):
        await measure("h2", requests=16, repeats=1)


def test_cli_prints_one_figure_per_variant() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.micro", "--requests", "200",
                          "--repeats", "1", "--variants", "plain,inbound"],
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=60).stdout
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["plain", "inbound"]
    assert all("µs/request" in line for line in lines)


def test_parse_refs_reads_valgrinds_summary() -> None:
    stderr = "==12== Events    : Ir\n==12== Collected : 1700190941\n==12==\n" \
             "==12== I   refs:      1,700,190,941\n"
    assert parse_refs(stderr) == 1_700_190_941
    with pytest.raises(RuntimeError):
        parse_refs("==12== valgrind: failed to start tool")

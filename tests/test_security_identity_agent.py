"""The sidecar's identity agent with a fake clock: first cert, jittered renewal, outages."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshctl.api import mesh_pb2
from meshctl.api.kinds import MeshConfigSpec
from meshctl.ca import BootstrapTokens, CertificateAuthority, init_ca
from meshctl.controlplane.ca_service import CertificateService, IssueError
from proxy.identity import WorkloadIdentity
from proxy.identity_agent import IdentityAgent, IdentityAgentConfig, rfc3339

TTL = 600.0


class FakeClock:
    """Time that moves only when the agent sleeps."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if len(self.sleeps) > 50:
            raise _Enough
        self.now += seconds


class _Enough(Exception):
    """Stops the agent's endless loop in a test."""


class Sink:
    """Stands in for ProxyServer.set_identity."""

    def __init__(self) -> None:
        self.installed: list[WorkloadIdentity] = []

    def set_identity(self, identity: Any) -> None:
        self.installed.append(identity)


class Issuer:
    """The CA service in-process; `down` makes calls fail like an unreachable control plane."""

    def __init__(self, ca_dir: Path, clock: FakeClock, service: str = "reviews") -> None:
        self.ca = CertificateAuthority(ca_dir, clock=clock)
        self.svc = CertificateService(self.ca, BootstrapTokens.load(ca_dir),
                                      lambda: MeshConfigSpec(certificate_ttl=TTL))
        self.down = False
        self.calls = 0

    async def __call__(self, request: mesh_pb2.CertificateRequest
                       ) -> mesh_pb2.CertificateResponse:
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("control plane down")
        return self.svc.issue(request)


def make(tmp_path: Path, service: str = "reviews", token_for: str = "reviews",
         ) -> tuple[IdentityAgent, FakeClock, Sink, Issuer]:
    """An agent for `service` holding `token_for`'s token, all on one fake clock."""
    clock = FakeClock(2_000_000_000.0)
    init_ca(tmp_path / "ca", clock=lambda: clock.now - 10)
    issuer = Issuer(tmp_path / "ca", clock)
    token = issuer.svc.tokens.token_for("default", token_for)
    sink = Sink()
    agent = IdentityAgent(sink, issuer, IdentityAgentConfig(service=service, token=token),
                          clock=clock, rng=random.Random(7), sleep=clock.sleep)
    return agent, clock, sink, issuer


async def test_first_certificate_is_installed_with_expiry(tmp_path: Path) -> None:
    """The agent installs the issued identity and reports its expiry."""
    agent, clock, sink, _ = make(tmp_path)
    identity = await agent.obtain()
    assert sink.installed == [identity]
    assert identity.spiffe_id == "spiffe://cluster.local/ns/default/sa/reviews"
    assert agent.cert_expiry == pytest.approx(clock.now + TTL, abs=1)
    assert agent.status()["certExpiry"].endswith("Z")
    assert agent.status()["expired"] is False


async def test_renews_within_50_to_70_percent_of_lifetime(tmp_path: Path) -> None:
    """Each renewal happens between 50% and 70% of the remaining lifetime, with jitter."""
    agent, clock, sink, _ = make(tmp_path)
    with pytest.raises(_Enough):
        await agent.run()
    assert agent.renewals >= 40
    delays = clock.sleeps[1:]  # the first sleep follows the first issuance too
    assert all(0.5 * TTL <= d <= 0.7 * TTL for d in delays)
    assert len({round(d, 3) for d in delays}) > 10  # jittered, not a fixed period
    assert len({i.cert_pem for i in sink.installed}) == len(sink.installed)


async def test_outage_keeps_current_cert_and_retries_with_backoff(tmp_path: Path) -> None:
    """While the control plane is down nothing is replaced; renewal resumes when it returns."""
    agent, clock, sink, issuer = make(tmp_path)
    first = await agent.obtain()
    issuer.down = True
    sleeps_before = len(clock.sleeps)

    async def recover_after_three(seconds: float) -> None:
        await FakeClock.sleep(clock, seconds)
        if len(clock.sleeps) - sleeps_before == 3:
            issuer.down = False

    agent.sleep = recover_after_three
    renewed = await agent.obtain()
    assert agent.failures == 3 and "control plane down" in agent.last_error
    assert sink.installed == [first, renewed]
    backoffs = clock.sleeps[sleeps_before:]
    assert all(0 <= b <= 30.0 for b in backoffs)


async def test_someone_elses_token_is_refused_and_nothing_installed(tmp_path: Path) -> None:
    """With ratings' token the reviews agent gets PERMISSION_DENIED and installs nothing."""
    agent, _, sink, _ = make(tmp_path, token_for="ratings")
    with pytest.raises(IssueError) as err:
        await agent.fetch_once()
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    assert sink.installed == [] and agent.cert_expiry is None


async def test_a_gateway_asks_once_registered_and_gets_the_marker(tmp_path: Path) -> None:
    """A gateway's agent (`first_after`: its registration) sends nothing before it, then its
    name with its gateway token: the CA marks the certificate for the gateway the registry
    holds, and renewals do not wait again."""
    clock = FakeClock(2_000_000_000.0)
    init_ca(tmp_path / "ca", clock=lambda: clock.now - 10)
    issuer = Issuer(tmp_path / "ca", clock)
    issuer.svc.trusted_gateway = lambda *proxy: proxy == ("gw-1", "default", "reviews")
    registered = asyncio.Event()
    waits = 0

    async def first_after() -> None:
        nonlocal waits
        waits += 1
        await registered.wait()

    sink = Sink()
    token = issuer.svc.tokens.gateway_token_for("default", "reviews")
    agent = IdentityAgent(sink, issuer, IdentityAgentConfig(service="reviews", token=token,
                                                            proxy="gw-1"),
                          clock=clock, rng=random.Random(7), sleep=clock.sleep,
                          first_after=first_after)
    task = asyncio.create_task(agent.run())
    for _ in range(20):
        await asyncio.sleep(0)  # let the agent run as far as it can
    assert (issuer.calls, waits) == (0, 1)
    registered.set()
    with pytest.raises(_Enough):
        await task
    assert issuer.calls > 2 and waits == 1
    assert all(identity.gateway for identity in sink.installed)


class ControlPlaneReports:
    """Stands in for proxy.agent.ControlPlaneAgent: what each certificate report carries."""

    def __init__(self) -> None:
        self.cert_expiry: Any = lambda: ""  # set by report_served_certificate
        self.cert_issued: Any = lambda: ""
        self.gateway_cert: Any = lambda: False
        self.sent: list[tuple[str, str]] = []

    def certificate_changed(self) -> None:
        self.sent.append((self.cert_expiry(), self.cert_issued()))


async def test_each_report_carries_the_certificate_just_installed(tmp_path: Path) -> None:
    """The Status sent on each installation carries that certificate's dates, not those of
    the one before it: the report was made before the agent recorded the new identity, so a
    1-minute certificate showed as expired in the control plane while the sidecar served a
    valid one."""
    from proxy.run import _IdentitySink, report_served_certificate
    from proxy.server import ProxyOptions, ProxyServer

    agent, clock, _, _ = make(tmp_path)
    server = ProxyServer(ProxyOptions())
    reports = ControlPlaneReports()
    report_served_certificate(server, reports)
    assert (reports.cert_expiry(), reports.gateway_cert()) == ("", False)  # none yet
    agent.sink = _IdentitySink(server, reports)
    first = await agent.obtain()
    clock.now += 0.6 * TTL
    renewed = await agent.obtain()
    assert renewed.not_after > first.not_after
    assert reports.sent == [(rfc3339(i.not_after), rfc3339(i.not_before))
                            for i in (first, renewed)]
    assert reports.cert_expiry() == rfc3339(renewed.not_after)

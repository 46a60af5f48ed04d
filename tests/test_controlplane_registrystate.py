"""The registry state file: round trip, atomic 0600 writes, and bad files ignored, not fatal."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path

import pytest

from meshctl.controlplane.registry import ProxyInfo, Registry
from meshctl.controlplane.registrystate import RegistryStateFile, decode, encode

PROXIES = [
    ProxyInfo(name="reviews-v1-1", service="reviews", labels={"version": "v1"},
              inbound="127.0.0.1:15006", admin="127.0.0.1:15000", ready=True,
              cert_expiry="2026-11-27T00:00:00Z", app_protocol="http1", app_port=9080),
    ProxyInfo(name="gateway-1", service="gateway", mode="gateway", outbound="0.0.0.0:8080",
              trusted_gateway=True),
]
UNTRUSTED = ProxyInfo(name="gateway-2", service="edge", mode="gateway", outbound="0.0.0.0:8081")


def test_encode_decode_round_trip() -> None:
    """A trusted gateway stays trusted across a restart (it is listed in snapshots during
    the warmup as before), an untrusted one untrusted."""
    assert decode(encode([*PROXIES, UNTRUSTED])) == [*PROXIES, UNTRUSTED]


def test_a_file_from_before_gateway_tokens_restores_gateways_untrusted() -> None:
    """No `trusted_gateway` key: False, until the gateway reconnects with its token."""
    [entry] = decode(b'{"format": 1, "proxies": [{"name": "g", "service": "gateway", '
                     b'"mode": "gateway"}]}')
    assert entry.trusted_gateway is False


def test_an_unknown_app_protocol_is_refused_as_a_register_would_be() -> None:
    """`app_protocol` (Register field 16) is auto, http1, http2, or empty for a gateway."""
    from meshctl.controlplane.xds import RegistrationError, check_proxy

    with pytest.raises(RegistrationError, match=r"register\.app_protocol"):
        check_proxy(ProxyInfo(name="web-v1-1", service="web", inbound="127.0.0.1:1",
                              app_protocol="h3"))


@pytest.mark.parametrize(("data", "error"), [
    (b"{not json", "Expecting property name"),
    (b'{"format": 2, "proxies": []}', "not a registry state file"),
    (b'{"format": 1, "proxies": {}}', "'proxies' must be a list"),
    (b'{"format": 1, "proxies": [{"service": "x"}]}', r"proxies\[0\]: not a proxy entry"),
    (b'{"format": 1, "proxies": [{"name": "a", "service": "x", "ready": "yes"}]}',
     r"proxies\[0\]\.ready: must be a bool"),
    (b'{"format": 1, "proxies": [{"name": "a", "service": "x", "trusted_gateway": 1}]}',
     r"proxies\[0\]\.trusted_gateway: must be a bool"),
    (b'{"format": 1, "proxies": [{"name": "a", "service": "x", "app_port": "9080"}]}',
     r"proxies\[0\]\.app_port: must be a int"),
    (b'{"format": 1, "proxies": [{"name": "a", "service": "x", "labels": {"v": 1}}]}',
     r"proxies\[0\]\.labels: must map strings to strings"),
])
def test_decode_rejects_what_it_did_not_write(data: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        decode(data)


def test_a_newer_control_planes_file_loads_without_the_keys_it_added(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """After a rollback, the file a newer control plane wrote has keys this version does not
    know, at the top level and in every entry: each proxy is restored from what it
    understands, and the unknown keys are logged once, not once per entry."""
    path = tmp_path / "registry.json"
    doc = json.loads(encode(PROXIES))
    doc["written_by"] = "0.9.0"
    for entry in doc["proxies"]:
        entry["mesh_zone"] = {"region": "eu"}
        entry["drain_state"] = 3
    path.write_text(json.dumps(doc))
    registry = Registry()
    assert RegistryStateFile(path, registry).restore(hold=15.0) == 2
    assert registry.proxies() == sorted(PROXIES, key=lambda p: p.name)
    assert [p.name for p in registry.endpoints()] == ["reviews-v1-1"]
    warnings = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert warnings == ["the registry state file has keys this version does not know, ignored "
                        "(written by a newer control plane?): drain_state, mesh_zone, "
                        "written_by (top level)"]
    assert "ignoring the registry state file" not in caplog.text


def test_save_then_restore_into_a_fresh_registry(tmp_path: Path) -> None:
    """What one control plane saved, the next restores, listed for the hold."""
    path = tmp_path / "state" / "registry.json"
    before = Registry()
    for info in PROXIES:
        before.register(info)
    RegistryStateFile(path, before).save()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    after = Registry()
    assert RegistryStateFile(path, after).restore(hold=15.0) == 2
    assert after.proxies() == sorted(PROXIES, key=lambda p: p.name)
    assert [p.name for p in after.endpoints()] == ["reviews-v1-1"]
    assert not any(after.connected(p.name) for p in PROXIES)


def test_a_bad_or_missing_file_leaves_the_registry_empty(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "registry.json"
    registry = Registry()
    assert RegistryStateFile(path, registry).restore(hold=15.0) == 0
    path.write_bytes(b"\x00garbage")
    assert RegistryStateFile(path, registry).restore(hold=15.0) == 0
    assert registry.proxies() == [] and "ignoring the registry state file" in caplog.text


async def test_run_saves_after_changes_and_once_more_when_cancelled(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    registry = Registry()
    state = RegistryStateFile(path, registry, interval=0.01)
    task = asyncio.create_task(state.run())
    registry.register(PROXIES[0])

    async def saved(count: int) -> None:
        while not path.exists() or len(decode(path.read_bytes())) != count:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(saved(1), 5)
    registry.register(PROXIES[1])
    task.cancel()  # before the coalescing interval ends: the final save still writes it
    with pytest.raises(asyncio.CancelledError):
        await task
    assert decode(path.read_bytes()) == [PROXIES[1], PROXIES[0]]


def test_restore_drops_entries_a_live_register_would_refuse(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Entries failing Register validation are dropped with a warning; good ones are restored."""
    path = tmp_path / "registry.json"
    doc = json.loads(encode(PROXIES))
    doc["proxies"][1:1] = [
        {"name": "poison", "service": "reviews", "inbound": "no-port-here", "ready": True},
        {"name": "odd", "service": "reviews", "mode": "daemon", "inbound": "127.0.0.1:1"}]
    path.write_text(json.dumps(doc))
    registry = Registry()
    assert RegistryStateFile(path, registry).restore(hold=15.0) == 2
    assert registry.proxies() == sorted(PROXIES, key=lambda p: p.name)
    assert ("dropping proxies[1] (poison) of the registry state file: register.inbound: "
            "expected HOST:PORT, got 'no-port-here'") in caplog.text
    assert "dropping proxies[2] (odd)" in caplog.text


async def test_a_stopping_control_plane_saves_every_proxy_its_stop_disconnects(
        tmp_path: Path) -> None:
    """`meshctl serve` closes the registry before its gRPC server ends the streams: with
    `--grace 0` each stream's end dropped its proxy at once, and the state file's last save,
    written after, lacked them (the restarted control plane then pushed the first sidecars
    back configs without the others, in full)."""
    path = tmp_path / "registry.json"
    registry = Registry(grace=0.0)
    state = RegistryStateFile(path, registry, interval=0.01)
    task = asyncio.create_task(state.run())
    sessions = {info.name: registry.register(info) for info in PROXIES}
    registry.close()  # what serve() does on SIGTERM, then the streams end
    for name, session in sessions.items():
        registry.disconnect(name, session)
    expiry = asyncio.create_task(registry.run())
    await asyncio.sleep(0.05)  # the expiry and the state file's writer both get to run
    expiry.cancel()
    task.cancel()
    for done in (expiry, task):
        with pytest.raises(asyncio.CancelledError):
            await done
    assert decode(path.read_bytes()) == sorted(PROXIES, key=lambda p: p.name)
    assert registry.proxies() == sorted(PROXIES, key=lambda p: p.name)

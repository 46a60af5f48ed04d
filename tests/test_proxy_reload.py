"""Static mode's config reload (SIGHUP, --watch-config) against real proxy processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import Address, ConfigError, Snapshot
from proxy.server import ProxyOptions, ProxyServer
from proxy.static import digest_of, read_static
from proxy.staticreload import restart_needed
from tests.ports import free_port
from tests.proxyharness import (
    Backends,
    ProxyProcess,
    RawBackend,
    eventually,
    get,
    metric_value,
    read_request,
    read_response,
    roundtrip,
    snapshot,
)

RELOADS = "ami_config_reloads_total"


class Versioned:
    """Two keep-alive backends answering their version; `/hold` waits for `release()`."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.hold = backends.call(self._event())
        self.peer_closed = {"v1": 0, "v2": 0}  # connections the proxy closed, per backend
        self.raw = {name: backends.raw(self._handler(name)) for name in ("v1", "v2")}

    @staticmethod
    async def _event() -> asyncio.Event:
        return asyncio.Event()

    def _handler(self, name: str) -> Any:
        async def handler(backend: RawBackend, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
            while (req := await read_request(reader)) is not None:
                backend.requests.append(req)
                if req.target == "/hold":
                    await self.hold.wait()
                body = name.encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s"
                             % (len(body), body))
                await writer.drain()
            self.peer_closed[name] += 1

        return handler

    def release(self) -> None:
        self.backends.loop.call_soon_threadsafe(self.hold.set)

    def port(self, name: str) -> int:
        return self.raw[name].port


@pytest.fixture
def versioned(backends: Backends) -> Versioned:
    return Versioned(backends)


def config(proxy: ProxyProcess, versioned: Versioned, weights: tuple[int, int], *,
           endpoints: tuple[str, ...] = ("v1", "v2")) -> dict[str, Any]:
    """The `web` service with a v1 and a v2 endpoint, routed by ``weights``."""
    data = snapshot({}, outbound=proxy.outbound, admin=proxy.admin)
    data["services"] = {"web": {
        "endpoints": [{"address": f"127.0.0.1:{versioned.port(v)}", "labels": {"version": v}}
                      for v in endpoints],
        "subsets": [{"name": "v1", "labels": {"version": "v1"}},
                    {"name": "v2", "labels": {"version": "v2"}}]}}
    data["routes"] = [{"host": "web", "rules": [{"backends": [
        {"subset": "v1", "weight": weights[0]}, {"subset": "v2", "weight": weights[1]}]}]}]
    data.pop("version", None)  # the version is the content's digest
    return data


def start(tmp: Path, versioned: Versioned, weights: tuple[int, int],
          *args: str) -> ProxyProcess:
    proxy = ProxyProcess(tmp, {}, args=args)
    proxy.config.write_text(yaml.safe_dump(config(proxy, versioned, weights)))
    return proxy.start()


def sighup(proxy: ProxyProcess) -> None:
    assert proxy.proc is not None
    proxy.proc.send_signal(signal.SIGHUP)


async def reloads(proxy: ProxyProcess, result: str) -> float:
    return metric_value(await proxy.metrics(), RELOADS, result=result)


async def wait_reloads(proxy: ProxyProcess, result: str, count: int,
                       timeout: float = 10.0) -> None:
    """Wait (with a deadline) until `result` was counted ``count`` times."""
    end = asyncio.get_running_loop().time() + timeout
    while (seen := await reloads(proxy, result)) < count:
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"{RELOADS}{{result={result}}} is {seen}, not {count}: "
                                 f"{proxy.stderr()}")
        await asyncio.sleep(0.02)  # poll interval of a deadline-bounded wait


async def answers(proxy: ProxyProcess, n: int = 20) -> list[str]:
    """The versions answering ``n`` requests to `web`, each on a new connection."""
    seen = []
    for _ in range(n):
        resp = await roundtrip(proxy.outbound, get("web"))
        assert resp.status == 200, resp
        seen.append(resp.body.decode())
    return seen


async def dump(proxy: ProxyProcess) -> dict[str, Any]:
    status, body = await proxy.aget("/config_dump")
    assert status == 200
    result: dict[str, Any] = json.loads(body)
    return result


def error_lines(proxy: ProxyProcess) -> list[str]:
    return [line for line in proxy.stderr().splitlines() if "config not reloaded" in line]


async def test_sighup_shifts_weights_keeping_connections_and_requests(
        tmp_path: Path, versioned: Versioned) -> None:
    """A rewritten file + SIGHUP moves traffic from v1 to v2, while a request in flight finishes
    on v1 and a keep-alive connection opened before carries requests to v2 after; dropping v1's
    endpoint retires its pool, whose busy connection closes once its request is done."""
    proxy = start(tmp_path, versioned, (100, 0))
    try:
        assert set(await answers(proxy)) == {"v1"}
        before = await dump(proxy)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        writer.write(get("web", "/"))
        assert (await asyncio.wait_for(read_response(reader), 10)).body == b"v1"
        held_reader, held_writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        held_writer.write(get("web", "/hold"))
        await eventually(lambda: any(r.target == "/hold" for r in versioned.raw["v1"].requests))

        proxy.config.write_text(yaml.safe_dump(config(proxy, versioned, (0, 100))))
        sighup(proxy)
        await wait_reloads(proxy, "applied", 1)
        assert set(await answers(proxy)) == {"v2"}
        for _ in range(3):  # the connection opened before the reload, reused after it
            writer.write(get("web", "/"))
            assert (await asyncio.wait_for(read_response(reader), 10)).body == b"v2"
        after = await dump(proxy)
        source = after["config_source"]
        assert source["digest"] != before["config_source"]["digest"]
        assert after["version"] == source["version"] == source["digest"][:len("sha256:") + 12]
        assert source["last_reload"]["result"] == "applied"
        assert source["last_reload"]["trigger"] == "SIGHUP"
        assert source["last_error"] is None
        assert (await proxy.stats())["config_version"] == after["version"]

        proxy.config.write_text(yaml.safe_dump(config(proxy, versioned, (0, 100),
                                                      endpoints=("v2",))))
        sighup(proxy)
        await wait_reloads(proxy, "applied", 2)
        pools = [p["address"] for p in (await proxy.stats())["upstream_pools"]]
        assert f"127.0.0.1:{versioned.port('v1')}" not in pools
        assert versioned.peer_closed["v1"] == 0  # busy: it ends with its request
        versioned.release()
        held = await asyncio.wait_for(read_response(held_reader), 10)
        assert (held.status, held.body) == (200, b"v1")  # started on the old config
        await eventually(lambda: versioned.peer_closed["v1"] == 1)
        assert set(await answers(proxy)) == {"v2"}
        for w in (writer, held_writer):
            w.close()
        assert await reloads(proxy, "rejected") == 0
    finally:
        proxy.stop()


async def test_sighup_reloads_policies_and_the_mesh_section(
        tmp_path: Path, versioned: Versioned) -> None:
    """A reload that adds a connection-pool limit to `web` and turns `mesh.accessLog` on: the
    limit refuses a second concurrent request (`overflow`), and requests are logged."""
    proxy = start(tmp_path, versioned, (100, 0))
    try:
        assert set(await answers(proxy, 3)) == {"v1"}
        assert proxy.stdout() == ""
        data = config(proxy, versioned, (100, 0))
        data["services"]["web"]["policy"] = {
            "connectionPool": {"maxConnections": 1, "maxPendingRequests": 0}}
        data["mesh"]["accessLog"] = True
        proxy.config.write_text(yaml.safe_dump(data))
        sighup(proxy)
        await wait_reloads(proxy, "applied", 1)
        held_reader, held_writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
        held_writer.write(get("web", "/hold"))
        await eventually(lambda: any(r.target == "/hold" for r in versioned.raw["v1"].requests))
        refused = await roundtrip(proxy.outbound, get("web"))
        assert (refused.status, refused.header("x-ami-reason")) == (503, "overflow")
        versioned.release()
        held = await asyncio.wait_for(read_response(held_reader), 10)
        assert (held.status, held.body) == (200, b"v1")
        await eventually(lambda: len(proxy.stdout().splitlines()) == 2, timeout=10)
        logged = [json.loads(line) for line in proxy.stdout().splitlines()]
        assert sorted((e["path"], e["status"], e["reason"]) for e in logged) == [
            ("/", 503, "overflow"), ("/hold", 200, "-")]
        held_writer.close()
    finally:
        proxy.stop()


@pytest.mark.parametrize("limits", [None, {"maxConnections": 3, "maxPendingRequests": 5}],
                         ids=["removed", "raised"])
async def test_a_reload_that_lifts_the_connection_limit_lets_queued_requests_go(
        tmp_path: Path, versioned: Versioned, limits: dict[str, int] | None) -> None:
    """One connection allowed to `web`, one request holding it and one queued for it: a reload
    that removes the connection pool's limits, or raises them, sends the queued request at
    once, and new requests are not held to the old limit (removed: none; raised: 3)."""
    proxy = ProxyProcess(tmp_path, {})
    data = config(proxy, versioned, (100, 0))
    data["services"]["web"]["policy"] = {
        "connectionPool": {"maxConnections": 1, "maxPendingRequests": 5}}
    proxy.config.write_text(yaml.safe_dump(data))
    proxy.start()
    writers: list[asyncio.StreamWriter] = []
    try:
        async def send(path: str) -> asyncio.StreamReader:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.outbound)
            writer.write(get("web", path))
            writers.append(writer)
            return reader

        async def v1_active() -> int:
            status, body = await proxy.aget("/stats")
            assert status == 200, body
            pools = json.loads(body)["upstream_pools"]
            return sum(p["active_requests"] for p in pools if p["version"] == "v1")

        held = await send("/hold")
        await eventually(lambda: any(r.target == "/hold" for r in versioned.raw["v1"].requests))
        queued = await send("/queued")
        end = asyncio.get_running_loop().time() + 10
        while await v1_active() < 2:  # taken in by the proxy, waiting for the one connection
            assert asyncio.get_running_loop().time() < end, "the second request never queued"
            await asyncio.sleep(0.02)  # poll interval of a deadline-bounded wait
        if limits is None:
            del data["services"]["web"]["policy"]
        else:
            data["services"]["web"]["policy"]["connectionPool"] = limits
        proxy.config.write_text(yaml.safe_dump(data))
        sighup(proxy)
        await wait_reloads(proxy, "applied", 1)
        answer = await asyncio.wait_for(read_response(queued), 10)  # /hold still held
        assert (answer.status, answer.body) == (200, b"v1")
        # new requests beside the held one: the old limit of one connection holds no more
        more = [await send(f"/more{i}") for i in range(2)]
        for reader in more:
            answer = await asyncio.wait_for(read_response(reader), 10)
            assert (answer.status, answer.body) == (200, b"v1")
        versioned.release()
        answer = await asyncio.wait_for(read_response(held), 10)
        assert (answer.status, answer.body) == (200, b"v1")
        assert metric_value(await proxy.metrics(), "ami_circuit_breaker_overflow_total") == 0
    finally:
        for writer in writers:
            writer.close()
        proxy.stop()


async def test_sighup_with_the_same_content_is_counted_unchanged(
        tmp_path: Path, versioned: Versioned) -> None:
    """A SIGHUP for a file whose bytes did not change applies nothing and counts `unchanged`."""
    proxy = start(tmp_path, versioned, (100, 0))
    try:
        assert await reloads(proxy, "unchanged") == 0
        sighup(proxy)
        await wait_reloads(proxy, "unchanged", 1)
        assert (await reloads(proxy, "applied"), await reloads(proxy, "rejected")) == (0, 0)
        assert (await dump(proxy))["config_source"]["last_reload"]["result"] == "unchanged"
    finally:
        proxy.stop()


async def test_watch_config_follows_a_rename_an_in_place_write_and_a_missing_file(
        tmp_path: Path, versioned: Versioned) -> None:
    """--watch-config applies a file renamed over the old one (new inode), then one written in
    place (same inode); a file gone for a while keeps the running config and, written again,
    is applied."""
    proxy = start(tmp_path, versioned, (100, 0), "--watch-config")
    path = proxy.config
    try:
        assert set(await answers(proxy)) == {"v1"}
        inode = path.stat().st_ino
        staged = tmp_path / "proxy.yaml.new"
        staged.write_text(yaml.safe_dump(config(proxy, versioned, (0, 100))))
        os.replace(staged, path)  # what `mv`, Kubernetes' ConfigMap volumes and editors do
        assert path.stat().st_ino != inode
        await wait_reloads(proxy, "applied", 1)
        assert set(await answers(proxy)) == {"v2"}
        assert (await dump(proxy))["config_source"]["last_reload"]["trigger"] == "watch"

        inode = path.stat().st_ino
        with path.open("r+") as f:  # truncate and write the same inode
            f.truncate(0)
            f.write(yaml.safe_dump(config(proxy, versioned, (100, 0))))
        assert path.stat().st_ino == inode
        await wait_reloads(proxy, "applied", 2)
        assert set(await answers(proxy)) == {"v1"}

        path.unlink()
        await eventually(lambda: "is missing" in proxy.stderr(), timeout=10)
        assert set(await answers(proxy)) == {"v1"}
        assert (await proxy.aget("/ready"))[0] == 200
        path.write_text(yaml.safe_dump(config(proxy, versioned, (0, 100))))
        await wait_reloads(proxy, "applied", 3)
        assert set(await answers(proxy)) == {"v2"}
        assert await reloads(proxy, "rejected") == 0
    finally:
        proxy.stop()


async def test_watch_config_follows_a_configmap_symlink_swap(
        tmp_path: Path, versioned: Versioned) -> None:
    """--watch-config on a Kubernetes ConfigMap volume's layout (`proxy.yaml` ->
    `..data/proxy.yaml`, `..data` -> a timestamped directory) applies the file once `..data`
    is swapped to a new directory."""
    proxy = ProxyProcess(tmp_path, {}, args=("--watch-config",))
    volume = tmp_path / "volume"
    first, second = volume / "..2026_01", volume / "..2026_02"
    for directory, weights in ((first, (100, 0)), (second, (0, 100))):
        directory.mkdir(parents=True)
        (directory / "proxy.yaml").write_text(yaml.safe_dump(config(proxy, versioned,
                                                                    weights)))
    (volume / "..data").symlink_to(first.name)
    (volume / "proxy.yaml").symlink_to("..data/proxy.yaml")
    proxy.config = volume / "proxy.yaml"
    proxy.start()
    try:
        assert set(await answers(proxy)) == {"v1"}
        (volume / "..data_tmp").symlink_to(second.name)
        os.replace(volume / "..data_tmp", volume / "..data")  # the kubelet's atomic swap
        await wait_reloads(proxy, "applied", 1)
        assert set(await answers(proxy)) == {"v2"}
    finally:
        proxy.stop()


_UNLOADABLE_CA = """
external:
  api.example.com:
    ports: [{number: 80, protocol: HTTP, targetPort: 443}]
    endpoints: [127.0.0.1:9]
    policy: {tls: {mode: SIMPLE, caCertificates: /nonexistent/ca.pem}}
"""
BAD_FILES = [
    ("invalid YAML", lambda text: text + "routes: [\n", "invalid YAML"),
    ("invalid field", lambda text: text.replace("address: 127.0.0.1:", "address: nowhere", 1),
     "services.web.endpoints[0].address: expected HOST:PORT"),
    ("misspelt key", lambda text: text.replace("subsets:", "subset:", 1),
     "services.web.subset: unknown field, did you mean 'subsets'?"),
    ("weights", lambda text: text.replace("weight: 0", "weight: 5", 1),
     "weights sum to 105, must be 100"),
    ("empty file", lambda _text: "", "the file is empty"),
    # parses, but the proxy cannot build it (as it would NACK the same push)
    ("NACK", lambda text: text + _UNLOADABLE_CA,
     "tls.caCertificates /nonexistent/ca.pem: No such file or directory"),
]


async def test_bad_files_keep_the_running_config(tmp_path: Path, versioned: Versioned) -> None:
    """Invalid YAML, an invalid field, a misspelt key, bad weights, an empty file, one the proxy
    cannot build (a push of it would be NACKed) and a missing file:
    each SIGHUP is refused with one error line naming the file and the field, counted and
    shown in /config_dump, while requests keep succeeding on the old config and /ready stays
    200; the good file is then applied."""
    proxy = start(tmp_path, versioned, (100, 0))
    path, good = proxy.config, proxy.config.read_text()
    running = (await dump(proxy))["version"]
    statuses: list[int] = []
    stop = asyncio.Event()

    async def client() -> None:  # traffic during and between the reloads
        while not stop.is_set():
            resp = await roundtrip(proxy.outbound, get("web"))
            statuses.append(resp.status if resp.body == b"v1" else -resp.status)

    traffic = asyncio.create_task(client())
    try:
        for count, (_name, spoil, why) in enumerate(BAD_FILES, start=1):
            path.write_text(spoil(good))
            sighup(proxy)
            await wait_reloads(proxy, "rejected", count)
            lines = error_lines(proxy)
            assert len(lines) == count
            assert str(path) in lines[-1] and why in lines[-1], lines[-1]
            assert f"still serving version {running}" in lines[-1]
            source = (await dump(proxy))["config_source"]
            assert why in source["last_error"]["error"]
            assert source["last_reload"]["result"] == "rejected"
            assert source["version"] == running
            assert (await proxy.aget("/ready"))[0] == 200
            assert set(await answers(proxy, 5)) == {"v1"}
        path.unlink()
        sighup(proxy)
        await wait_reloads(proxy, "rejected", len(BAD_FILES) + 1)
        assert f"{path}: cannot read: No such file or directory" in error_lines(proxy)[-1]
        assert set(await answers(proxy, 5)) == {"v1"}

        path.write_text(yaml.safe_dump(config(proxy, versioned, (0, 100))))
        sighup(proxy)
        await wait_reloads(proxy, "applied", 1)
        assert set(await answers(proxy, 5)) == {"v2"}
    finally:
        stop.set()
        await traffic
        proxy.stop()
    assert statuses and all(s in (200, -200) for s in statuses), statuses
    assert 200 in statuses  # served by v1 while the bad files came and went


async def test_changes_needing_a_restart_are_refused_whole(
        tmp_path: Path, versioned: Versioned) -> None:
    """A file moving the outbound listener, or changing the node's labels, is refused whole
    (its route change too) with a message that a restart is needed; the old port serves on."""
    proxy = start(tmp_path, versioned, (100, 0))
    try:
        good = config(proxy, versioned, (0, 100))  # a route change that alone would apply
        moved = free_port()
        changed = json.loads(json.dumps(good))
        changed["listeners"]["outbound"] = f"127.0.0.1:{moved}"
        changed["node"]["labels"] = {"version": "v9"}
        proxy.config.write_text(yaml.safe_dump(changed))
        sighup(proxy)
        await wait_reloads(proxy, "rejected", 1)
        line = error_lines(proxy)[-1]
        assert (f"{proxy.config}: a restart is needed to change listeners.outbound "
                f"(127.0.0.1:{proxy.outbound} -> 127.0.0.1:{moved}), node.labels") in line
        assert set(await answers(proxy)) == {"v1"}  # nothing of the file was applied
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", moved)
        assert (await proxy.aget("/ready"))[0] == 200

        proxy.config.write_text(yaml.safe_dump(good))
        sighup(proxy)
        await wait_reloads(proxy, "applied", 1)
        assert set(await answers(proxy)) == {"v2"}
    finally:
        proxy.stop()


def test_watch_config_needs_a_config_file() -> None:
    """--watch-config without --config (control-plane mode) stops the start with a clear error."""
    done = subprocess.run([sys.executable, "-m", "proxy", "--control-plane", "127.0.0.1:1",
                           "--service", "x", "--watch-config"], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 2
    assert "--watch-config needs --config" in done.stderr


@pytest.mark.parametrize("dry_run", [False, True], ids=["start", "dry-run"])
def test_a_file_the_proxy_refuses_stops_the_start_with_the_reload_wording(
        tmp_path: Path, dry_run: bool) -> None:
    """A file that parses but that the proxy cannot build (what a reload refuses as "NACK"
    above) ends the start, or fails --dry-run, with one `error:` line worded as the reload's
    (file, field, why) and status 2: no traceback."""
    path = tmp_path / "proxy.yaml"
    data = snapshot({}, outbound=free_port(), admin=free_port())
    path.write_text(yaml.safe_dump(data) + _UNLOADABLE_CA)
    done = subprocess.run([sys.executable, "-m", "proxy", "--config", str(path),
                           *(["--dry-run"] if dry_run else [])],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {path}: tls.caCertificates /nonexistent/ca.pem: "
                      "No such file or directory"], done.stderr


def _snapshot(**changes: Any) -> Snapshot:
    data: dict[str, Any] = {
        "listeners": {"outbound": "127.0.0.1:1001", "inbound": "127.0.0.1:1002",
                      "gateway": "127.0.0.1:1003"},
        "node": {"service": "web", "labels": {"version": "v1"}, "locality": "eu/a"},
        "app": "127.0.0.1:1004", "appProtocol": "auto"}
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section] = {**data[section], field: value}
        else:
            data[section] = value
    return Snapshot.from_dict(data)


@pytest.mark.parametrize(("changes", "named"), [
    ({"listeners__outbound": "127.0.0.1:2001"},
     ["listeners.outbound (127.0.0.1:1001 -> 127.0.0.1:2001)"]),
    ({"listeners__admin": "127.0.0.1:2000"},
     ["listeners.admin (127.0.0.1:15000 -> 127.0.0.1:2000)"]),
    ({"node__service": "api"}, ["node.service"]),
    ({"node__namespace": "shop"}, ["node.namespace"]),
    ({"node__labels": {"version": "v2"}}, ["node.labels"]),
    ({"node__locality": "eu/b"}, ["node.locality"]),
    ({"node__metricsName": "web.shop"}, ["node.metricsName"]),
    ({"app": "127.0.0.1:2004"}, ["app (127.0.0.1:1004 -> 127.0.0.1:2004)"]),
    ({"appProtocol": "http2"}, ["appProtocol (auto -> http2)"]),
    ({"listeners": {"inbound": "127.0.0.1:1002", "gateway": "127.0.0.1:1003"}},
     ["listeners.outbound (127.0.0.1:1001 -> none)"]),
    # the command line's --inbound wins over the file; a sidecar binds no gateway listener
    ({"listeners__inbound": "127.0.0.1:2002", "listeners__gateway": "127.0.0.1:2003"}, []),
], ids=lambda v: ",".join(v) if isinstance(v, dict) else None)
async def test_restart_needed_names_what_cannot_change_in_place(
        changes: dict[str, Any], named: list[str]) -> None:
    """The listeners in use (admin too), node, app and appProtocol need a restart; a listener
    a flag sets, or one the mode does not bind, does not."""
    server = ProxyServer(ProxyOptions(listeners={"inbound": Address("127.0.0.1", 9)}))
    admin = Address("127.0.0.1", 15000)  # as bound: the default
    assert restart_needed(server, admin, _snapshot(), _snapshot()) == []
    assert restart_needed(server, admin, _snapshot(), _snapshot(**changes)) == named


async def test_an_app_protocol_the_command_line_sets_is_no_change() -> None:
    """With --app-protocol, the file's appProtocol is not used: changing it needs no restart."""
    server = ProxyServer(ProxyOptions(app_protocol="http1"))
    admin = Address("127.0.0.1", 15000)
    assert restart_needed(server, admin, _snapshot(), _snapshot(appProtocol="http2")) == []


def test_a_static_file_without_version_gets_its_digest(tmp_path: Path) -> None:
    """A file without `version` runs as `sha256:` and 12 hex digits of its bytes; with one, as
    it says; YAML errors are one line, with where."""
    path = tmp_path / "proxy.yaml"
    path.write_bytes(b"mesh: {accessLog: true}\n")
    config = read_static(path)
    assert config.digest == digest_of(path.read_bytes())
    assert config.snapshot.version == config.digest[:19]
    path.write_text("version: static-7\n")
    assert read_static(path).snapshot.version == "static-7"
    path.write_text("routes: [\n")
    with pytest.raises(ConfigError) as err:
        read_static(path)
    assert str(err.value) == (f"{path}: invalid YAML: line 2, column 1: expected the node "
                              "content, but found '<stream end>'")

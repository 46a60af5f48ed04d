"""gRPC through a real mesh: control plane, sidecars with CA-issued identities, `meshctl shift`.

Two versions of a gRPC service (grpcio, h2c) sit behind their sidecars; a client sidecar's
outbound listener takes the calls. Traffic is mTLS (HTTP/2 with ALPN h2) between the sidecars,
as the control plane's default STRICT mode wants; `meshctl shift` moves calls between versions
and `meshctl stat` sees them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator

import grpc
import pytest

from tests.grpcapp import EchoServer, channel, method
from tests.helpers_mesh import wait_for
from tests.meshbuilder import Mesh
from tests.resources import destination_policy, documents, route

pytestmark = pytest.mark.timeout(180)
DEADLINE = 10.0

POLICY = documents(destination_policy("greeter"), route("greeter", {"v1": 50, "v2": 50}))


class GrpcMesh(Mesh):
    bare_env = True

    def build(self) -> GrpcMesh:
        self.loop = asyncio.new_event_loop()
        self.servers = {v: EchoServer(f"greeter-{v}") for v in ("v1", "v2")}
        started = threading.Event()

        def serve() -> None:
            asyncio.set_event_loop(self.loop)
            for server in self.servers.values():
                self.loop.run_until_complete(server.start())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        self.defer(self.stop_servers)
        assert started.wait(DEADLINE)
        self.control_plane(POLICY, warmup=0.0)
        for version, server in self.servers.items():
            self.sidecar("greeter", version, app=f"127.0.0.1:{server.port}")
        self.client = self.sidecar("client")
        return self

    def stop_servers(self) -> None:
        for server in self.servers.values():
            asyncio.run_coroutine_threadsafe(server.stop(), self.loop).result(DEADLINE)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GrpcMesh]:
    with GrpcMesh(tmp_path_factory.mktemp("cpgrpc")) as m:
        m.build().wait_synced()
        yield m


async def _servers(port: int, calls: int) -> list[str]:
    """Which server answered each of `calls` unary calls through the sidecar at `port`."""
    async with channel(port, "greeter") as ch:
        unary = method(ch, "Unary")
        answers = [json.loads(await unary(b"x", timeout=DEADLINE)) for _ in range(calls)]
    return [a["server"] for a in answers]


async def test_grpc_calls_cross_the_mesh_over_mtls(mesh: GrpcMesh) -> None:
    port = int(mesh.client.info["outbound"].rsplit(":", 1)[1])
    async with channel(port, "greeter") as ch:
        answer = json.loads(await method(ch, "Unary")(b"hello", timeout=DEADLINE))
    xfcc = answer["metadata"]["x-forwarded-client-cert"]
    assert "URI=spiffe://cluster.local/ns/default/sa/client" in xfcc
    assert answer["server"] in ("greeter-v1", "greeter-v2")


async def test_shift_moves_grpc_calls(mesh: GrpcMesh) -> None:
    """`meshctl shift greeter 0/100` sends every call to v2; 100/0 back to v1 (calls on one
    client connection are routed one by one)."""
    port = int(mesh.client.info["outbound"].rsplit(":", 1)[1])
    for split, expected in (("0/100", "greeter-v2"), ("100/0", "greeter-v1")):
        done = mesh.meshctl("shift", "greeter", split)
        assert done.returncode == 0, done.stderr
        assert set(await _servers(port, 20)) == {expected}
    done = mesh.meshctl("shift", "greeter", "50/50")
    assert done.returncode == 0, done.stderr
    assert set(await _servers(port, 60)) == {"greeter-v1", "greeter-v2"}


async def test_stat_counts_grpc_calls(mesh: GrpcMesh) -> None:
    port = int(mesh.client.info["outbound"].rsplit(":", 1)[1])
    await _servers(port, 10)

    def listed() -> bool:
        done = mesh.meshctl("stat", "greeter", "-o", "json")
        assert done.returncode == 0, done.stderr
        rows = [r for r in json.loads(done.stdout)["rows"] if r["service"] == "greeter"]
        return bool(rows) and all(r["mtlsShare"] == 1.0 and r["successRate"] == 1.0
                                  for r in rows) and sum(r["rps"] for r in rows) > 0

    wait_for(listed, 30, "meshctl stat listing greeter")


async def test_tap_shows_grpc_status(mesh: GrpcMesh) -> None:
    """`meshctl tap` lists gRPC calls with their protocol and grpc-status."""
    port = int(mesh.client.info["outbound"].rsplit(":", 1)[1])
    tapped = asyncio.ensure_future(asyncio.to_thread(
        mesh.meshctl, "tap", "greeter", "--path", "/ami.test.Echo/Fail", "-n", "2", "-o",
        "json"))
    async with channel(port, "greeter") as ch:
        fail = method(ch, "Fail")
        end = asyncio.get_running_loop().time() + 30
        while not tapped.done() and asyncio.get_running_loop().time() < end:
            with pytest.raises(grpc.aio.AioRpcError):
                await fail(b"NOT_FOUND", timeout=DEADLINE)
    done = await tapped
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(events) == 2
    assert all(e["protocol"] == "HTTP/2" and e["grpc_status"] == "5" and e["status"] == 200
               for e in events), events


async def test_stat_counts_grpc_failures_as_failures(mesh: GrpcMesh) -> None:
    """A call the server fails (HTTP 200, grpc-status 5) lowers the success rate, as in
    Linkerd: as many good calls as failed ones on v1 give about 50%."""
    done = mesh.meshctl("shift", "greeter", "100/0")
    assert done.returncode == 0, done.stderr
    port = int(mesh.client.info["outbound"].rsplit(":", 1)[1])

    def rate() -> float | None:
        done = mesh.meshctl("stat", "greeter", "--window", "5s", "-o", "json")
        assert done.returncode == 0, done.stderr
        rows = [r for r in json.loads(done.stdout)["rows"] if r["version"] == "v1"]
        return rows[0]["successRate"] if rows else None

    # The calls go on until stat has read them: a fixed batch of calls left the 5 s window
    # before a slow machine's first `meshctl stat` (a process start) got its answer.
    read = asyncio.ensure_future(asyncio.to_thread(
        wait_for, lambda: (r := rate()) is not None and 0.2 < r < 0.8, 30,
        "a success rate between 20% and 80% for greeter v1"))
    async with channel(port, "greeter") as ch:
        while not read.done():
            await method(ch, "Unary")(b"ok", timeout=DEADLINE)
            with pytest.raises(grpc.aio.AioRpcError):
                await method(ch, "Fail")(b"NOT_FOUND", timeout=DEADLINE)
            # pacing, not a wait: a trickle of calls, not a load that slows the sidecars'
            # answers to the control plane's scrapes (1.5 s each) on a loaded machine
            await asyncio.sleep(0.1)
    await read

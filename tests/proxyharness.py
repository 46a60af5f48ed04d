"""Test harness for the proxy: run `python -m proxy --config` as a process, plus small backends.

Backends run on an event loop in a thread, so one proxy and its backends serve a whole module.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from aiohttp import web

from tests.ports import free_port

REPO = Path(__file__).resolve().parent.parent
# Which source tree `python -m proxy` runs from (override to test another checkout).
PROXY_ROOT = Path(os.environ.get("AMI_PROXY_ROOT", REPO))
T = TypeVar("T")


# --- tiny HTTP/1.1 message readers for raw-socket tests -------------------------------------
@dataclass
class Message:
    """A parsed request or response: first line, headers in order, body."""

    first: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        low = name.lower()
        return next((v for k, v in self.headers if k.lower() == low), None)

    @property
    def status(self) -> int:
        return int(self.first.split(" ", 2)[1])

    @property
    def target(self) -> str:
        return self.first.split(" ", 2)[1]


async def read_head(reader: asyncio.StreamReader) -> Message | None:
    """Read a message head; None on a clean EOF before any byte."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise
    lines = raw.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    return Message(lines[0], headers)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def read_body(reader: asyncio.StreamReader, msg: Message, *, until_close: bool) -> bytes:
    if (msg.header("transfer-encoding") or "").lower() == "chunked":
        return await read_chunked(reader)
    length = msg.header("content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read() if until_close else b""


async def read_request(reader: asyncio.StreamReader) -> Message | None:
    """Read one request (head and body); None when the peer closed between requests."""
    msg = await read_head(reader)
    if msg is not None:
        msg.body = await read_body(reader, msg, until_close=False)
    return msg


async def read_response(reader: asyncio.StreamReader, method: str = "GET") -> Message:
    """Read one final response, skipping 1xx; no body for HEAD, 204 and 304."""
    while True:
        msg = await read_head(reader)
        if msg is None:
            raise ConnectionError("connection closed before a response")
        if msg.status >= 200 or msg.status == 101:
            break
    if method != "HEAD" and msg.status not in (204, 304, 101):
        msg.body = await read_body(reader, msg, until_close=True)
    return msg


async def roundtrip(port: int, raw: bytes, method: str = "GET") -> Message:
    """Send raw bytes on a new connection and read one response."""
    return (await roundtrip_close(port, raw, method, wait_close=False))[0]


async def roundtrip_close(port: int, raw: bytes, method: str = "GET", *,
                          wait_close: bool = True) -> tuple[Message, bool]:
    """Like `roundtrip`, plus whether the proxy closed the connection after the response."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        resp = await asyncio.wait_for(read_response(reader, method), 10)
        return resp, wait_close and await at_eof(reader, 5)
    finally:
        writer.close()


async def at_eof(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True if the peer closes (EOF or reset) within the timeout with no further bytes."""
    try:
        data = await asyncio.wait_for(reader.read(1), timeout)
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return data == b""


def get(host: str, path: str = "/", extra: str = "", body: bytes = b"",
        method: str = "GET") -> bytes:
    """An origin-form request with a Host header (and Content-Length when a body is given)."""
    length = f"Content-Length: {len(body)}\r\n" if body or method in ("POST", "PUT") else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}{extra}\r\n".encode() + body


def keepalive_timers(pid: int, port: int) -> list[tuple[int, float]]:
    """The proxy's established TCP connections to ``port``: (timer kind, seconds to it) each,
    from /proc/net/tcp (kind 2 is the keepalive timer, 0 none)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(int(link[8:-1]))
    ticks = os.sysconf("SC_CLK_TCK")
    timers = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        kind, when = fields[5].split(":")
        if remote_port == port and fields[3] == "01" and int(fields[9]) in inodes:
            timers.append((int(kind, 16), int(when, 16) / ticks))
    return timers


async def eventually(predicate: Callable[[], Any], timeout: float = 10.0, *,
                     what: str = "condition") -> None:
    """Wait until `predicate()` holds (checked every 10 ms), failing after `timeout` seconds."""
    end = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > end:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.01)  # poll interval of a deadline-bounded wait


async def close_now(backend: RawBackend, writer: asyncio.StreamWriter) -> None:
    """Close a backend connection and count it once the FIN is out."""
    writer.close()
    await writer.wait_closed()
    backend.closed += 1


# --- backends ---------------------------------------------------------------------------------
@dataclass
class RawBackend:
    """A raw asyncio server; `accepted` counts connections, `requests` collects parsed ones."""

    port: int = 0
    accepted: int = 0
    closed: int = 0  # connections the handler closed itself (see `close_now`)
    requests: list[Message] = field(default_factory=list)
    server: asyncio.base_events.Server | None = None


class Backends:
    """An event loop in a daemon thread that hosts aiohttp apps and raw socket servers."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []
        self._raw: list[RawBackend] = []

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def aiohttp(self, app: web.Application) -> int:
        async def start() -> int:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            return int(runner.addresses[0][1])

        return self.call(start())

    def raw(self, handler: Callable[[RawBackend, asyncio.StreamReader, asyncio.StreamWriter],
                                    Awaitable[None]]) -> RawBackend:
        backend = RawBackend()

        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            backend.accepted += 1
            try:
                await handler(backend, reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        async def start() -> None:
            backend.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
            backend.port = int(backend.server.sockets[0].getsockname()[1])

        self.call(start())
        self._raw.append(backend)
        return backend

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()
            for backend in self._raw:
                if backend.server is not None:
                    backend.server.close()
            # Connection handlers still waiting on a socket end here, not as "Task was
            # destroyed but it is pending" when the loop stops under them.
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        try:
            self.call(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)


def echo_app() -> web.Application:
    """Echoes what arrived as JSON; `/chunked`, `/status/N`, `/slow?s=`, `/ws` and `/bytes?n=`."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "method": request.method, "path": request.path, "raw_path": request.raw_path,
            "version": f"{request.version.major}.{request.version.minor}",
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode("latin-1"), "peer": request.remote,
        })

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(5):
            await resp.write(b"part%d;" % i)
        await resp.write_eof()
        return resp

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, headers={"etag": '"v1"', "x-code": str(code)})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("s", "1")))  # the slowness under test
        return web.Response(text="slow done")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str("hello from backend")
        async for msg in sock:
            await sock.send_str("echo:" + msg.data)
        return sock

    app = web.Application()
    app.router.add_route("GET", "/chunked", chunked)
    app.router.add_route("*", "/status/{code}", status)
    app.router.add_get("/slow", slow)
    app.router.add_get("/ws", ws)
    app.router.add_route("*", "/{tail:.*}", echo)
    return app


# --- the proxy process ------------------------------------------------------------------------
def snapshot(services: dict[str, list[int]], *, outbound: int, admin: int,
             access_log: bool = False, routes: list[dict[str, Any]] | None = None
             ) -> dict[str, Any]:
    """A static snapshot: each service gets one endpoint per backend port (labelled v1)."""
    return {
        "version": "test-1",
        "node": {"service": "client", "labels": {"version": "v1"}},
        "listeners": {"outbound": f"127.0.0.1:{outbound}", "admin": f"127.0.0.1:{admin}"},
        "mesh": {"accessLog": access_log},
        "services": {
            name: {"endpoints": [{"address": f"127.0.0.1:{p}", "labels": {"version": "v1"}}
                                 for p in ports]}
            for name, ports in services.items()
        },
        "routes": routes or [],
    }


def dry_run(tmp: Path, *flags: str, config: str = "version: s\n"
            ) -> subprocess.CompletedProcess[str]:
    """`python -m proxy --config FILE FLAGS --dry-run`, FILE holding ``config`` (by default an
    empty snapshot): how a start with these flags ends, without starting."""
    path = tmp / "p.yaml"
    path.write_text(config)
    return subprocess.run([sys.executable, "-m", "proxy", "--config", str(path), *flags,
                           "--dry-run"], cwd=PROXY_ROOT, capture_output=True, text=True,
                          timeout=60)


class ProxyProcess:
    """`python -m proxy --config` on free ports; `start()` returns once `/ready` says 200."""

    def __init__(self, tmp: Path, services: dict[str, list[int]], args: tuple[str, ...] = (),
                 **snapshot_kw: Any) -> None:
        self.outbound = free_port()
        self.admin = free_port()
        self.config = tmp / "proxy.yaml"
        self.config.write_text(yaml.safe_dump(
            snapshot(services, outbound=self.outbound, admin=self.admin, **snapshot_kw)))
        self.stdout_path = tmp / "proxy.stdout"
        self.stderr_path = tmp / "proxy.stderr"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None

    def listen_as_gateway(self, rules: list[dict[str, Any]]) -> int:
        """Before `start()`, with `--mode gateway` in `args`: the file's listeners become a
        gateway listener on a free port (returned) and the admin one, and `gateway.rules`
        are ``rules``."""
        port = free_port()
        config = yaml.safe_load(self.config.read_text())
        config["listeners"] = {"gateway": f"127.0.0.1:{port}", "admin": f"127.0.0.1:{self.admin}"}
        config["gateway"] = {"rules": rules}
        self.config.write_text(yaml.safe_dump(config))
        return port

    def start(self, deadline: float = 15.0,
              open_files: tuple[int, int] | None = None) -> ProxyProcess:
        """``open_files``: the (soft, hard) RLIMIT_NOFILE to start the process with."""
        cmd = [sys.executable, "-m", "proxy", "--config", str(self.config),
               "--log-level", "WARNING", *self.args]

        def limit_files() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, open_files)

        # No preexec_fn unless needed: with one, the child runs Python between fork and exec,
        # and a gRPC library with threads in this process (the gRPC tests' servers) aborts
        # there (its fork handlers); without, CPython uses vfork and runs none of them.
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=PROXY_ROOT, stdout=out, stderr=err,
                                         preexec_fn=limit_files if open_files else None)
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proc.returncode}: {self.stderr()}")
            try:
                if self.get("/ready")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)  # polling interval of a deadline-bounded readiness wait
        self.stop()
        raise RuntimeError(f"proxy not ready within {deadline}s: {self.stderr()}")

    def get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        """A blocking admin request (use from sync code or via `aget`)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    async def aget(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        return await asyncio.to_thread(self.get, path, method)

    async def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((await self.aget("/stats"))[1])
        return result

    async def metrics(self) -> str:
        return (await self.aget("/metrics"))[1].decode()

    def vm_hwm_kb(self) -> int:
        """Peak resident set size of the proxy process, from /proc."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        """The access log, when on: its whole lines only (the proxy may be writing a batch
        as the test reads, and a line cut short is no line yet)."""
        text = self.stdout_path.read_text(errors="replace")
        return text[:text.rfind("\n") + 1]

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait for exit; kill if it does not exit in time. Returns the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return int(proc.returncode)


def metric_value(exposition: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include all of `labels`."""
    total = 0.0
    for line in exposition.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def every_count_logged(exposition: str, logged: int) -> bool:
    """Whether ``logged`` access-log lines are one per request and per TCP connection the
    exposition counted: a proxy writes its log in batches after the count, so a test that
    counts lines from a baseline waits for this first, then counts only its own."""
    return logged == (metric_value(exposition, "ami_requests_total")
                      + metric_value(exposition, "ami_tcp_connections_closed_total"))

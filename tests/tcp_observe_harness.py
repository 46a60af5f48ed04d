"""A mesh with a TCP service for observability tests: `meshctl serve`, `db` (tests/tcpapp.py
behind an `--app-protocol tcp` sidecar), `reviews` (HTTP) and `web`, which calls reviews over
HTTP and db on a local `--tcp-upstream` port."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers_mesh import (
    ROOT,
    MeshProcess,
    all_synced,
    free_port,
    http_json,
    start_backend,
    start_control_plane,
    start_sidecar,
    wait_for,
)
from tests.tcpapp import start_tcp_app

TIMEOUT = 10.0
__all__ = ["TIMEOUT", "Mesh", "start_tcp_app", "tcp_mesh"]


@dataclass
class Mesh:
    """`web` calls `reviews` over HTTP and `db` (a TCP service) on a local port."""

    tmp: Path
    cp: MeshProcess
    web: MeshProcess
    db_port: int
    procs: list[MeshProcess]

    def meshctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, AMI_TOKEN=self.cp.info["token"])
        return subprocess.run([sys.executable, "-m", "meshctl", "--control-plane",
                               self.cp.info["api"], *args], capture_output=True, text=True,
                              timeout=30, env=env, cwd=ROOT)

    def json(self, *args: str) -> Any:
        out = self.meshctl(*args, "-o", "json")
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def connect(self) -> socket.socket:
        """A connection to db through web's sidecar, past db's banner."""
        sock = socket.create_connection(("127.0.0.1", self.db_port), timeout=TIMEOUT)
        line = b""
        while not line.endswith(b"\n"):
            line += sock.recv(1)
        assert line == b"hello from db\n", line
        return sock


@contextlib.contextmanager
def tcp_mesh(tmp: Path) -> Iterator[Mesh]:
    """The mesh, running until the block ends."""
    (tmp / "mesh").mkdir()
    procs: list[MeshProcess] = []
    try:
        cp = start_control_plane(tmp, warmup=0.0)
        procs.append(cp)
        db_app = start_tcp_app(tmp, "db")
        procs.append(db_app)
        db = start_sidecar(tmp, cp.info["grpc"], "db", "v1", app=db_app.info["address"],
                           extra=["--app-protocol", "tcp"])
        procs.append(db)
        backend = start_backend(tmp, "reviews-v1")
        procs.append(backend)
        reviews = start_sidecar(tmp, cp.info["grpc"], "reviews", "v1",
                                app=backend.info["address"])
        procs.append(reviews)
        db_port = free_port()
        web = start_sidecar(tmp, cp.info["grpc"], "web", "v1",
                            extra=["--tcp-upstream", f"127.0.0.1:{db_port}=db:5432"])
        procs.append(web)
        names = {p.info["name"] for p in (db, reviews, web)}
        wait_for(lambda: all_synced(cp, names), 20, "sidecars synced")

        def db_is_tcp() -> bool:
            status, dump = http_json(f"http://{web.info['admin']}/config_dump")
            service = dump["snapshot"]["services"].get("db") if status == 200 else None
            return bool(service and service.get("protocol") == "tcp" and service["endpoints"])

        wait_for(db_is_tcp, 20, "db published as a TCP service")
        yield Mesh(tmp, cp, web, db_port, procs)
    finally:
        for p in reversed(procs):
            p.stop()

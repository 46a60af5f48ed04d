"""A mesh with a TCP service for observability tests: `meshctl serve`, `db` (tests/tcpapp.py
behind an `--app-protocol tcp` sidecar), `reviews` (HTTP) and `web`, which calls reviews over
HTTP and db on a local `--tcp-upstream` port."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests import meshbuilder
from tests.helpers_mesh import free_port, http_json, wait_for
from tests.tcpapp import start_tcp_app

TIMEOUT = 10.0
__all__ = ["TIMEOUT", "Mesh", "start_tcp_app", "tcp_mesh"]


class Mesh(meshbuilder.Mesh):
    """`web` calls `reviews` over HTTP and `db` (a TCP service) on a local port."""

    def build(self) -> Mesh:
        self.control_plane(warmup=0.0)
        db_app = self.started(start_tcp_app(self.tmp, "db"))
        self.sidecar("db", app=db_app.info["address"], extra=["--app-protocol", "tcp"])
        self.service("reviews", "v1")
        self.db_port = free_port()
        self.web = self.sidecar("web",
                                extra=["--tcp-upstream", f"127.0.0.1:{self.db_port}=db:5432"])
        self.wait_synced(20)
        wait_for(self.db_is_tcp, 20, "db published as a TCP service")
        return self

    def db_is_tcp(self) -> bool:
        status, dump = http_json(f"http://{self.web.info['admin']}/config_dump")
        service = dump["snapshot"]["services"].get("db") if status == 200 else None
        return bool(service and service.get("protocol") == "tcp" and service["endpoints"])

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
    with Mesh(tmp) as mesh:
        yield mesh.build()

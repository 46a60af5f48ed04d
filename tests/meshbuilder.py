"""A test mesh in a few calls: `meshctl serve`, resources, sidecars and apps, stopped together."""

from __future__ import annotations

import http.client
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from tests.helpers_mesh import (
    PYTHON,
    ROOT,
    MeshProcess,
    all_synced,
    apply_yaml,
    http_get,
    http_json,
    proxies,
    start_backend,
    start_control_plane,
    start_sidecar,
    wait_for,
)
from tests.ports import free_port
from tests.proxyharness import metric_value


class Mesh:
    """Real processes on loopback, each stopped (last started first) when the mesh closes.

    ``with Mesh(tmp) as mesh: mesh.control_plane(...); mesh.service("reviews", "v1", "v2")``;
    a test module subclasses it for the calls particular to it."""

    bare_env = False  # meshctl() with only the token and PATH, not this process's environment

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[MeshProcess] = []  # all but the control plane, in start order
        self.sidecar_procs: list[MeshProcess] = []  # in start order
        self._cp: MeshProcess | None = None
        self._cleanups: list[Callable[[], object]] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- starting ------------------------------------------------------------------------------
    def started(self, proc: MeshProcess) -> MeshProcess:
        """Stop ``proc`` with the mesh (for processes started by other harnesses)."""
        self.procs.append(proc)
        self.defer(proc.stop)
        return proc

    def defer(self, cleanup: Callable[[], object]) -> None:
        """Run ``cleanup`` when the mesh closes, in the same last-first order as the stops."""
        self._cleanups.append(cleanup)

    def control_plane(self, *resources: str, **kw: Any) -> Mesh:
        """``meshctl serve`` (``start_control_plane``'s keywords) with ``resources`` in its
        config dir, read at start."""
        config_dir = self.tmp / "mesh"
        config_dir.mkdir(exist_ok=True)
        if resources:
            (config_dir / "base.yaml").write_text("---\n".join(resources))
        self._cp = start_control_plane(self.tmp, **kw)
        self.defer(lambda: self.cp.stop())  # the one running then: a test may restart it
        return self

    @property
    def cp(self) -> MeshProcess:
        assert self._cp is not None, "control_plane() first"
        return self._cp

    @cp.setter
    def cp(self, proc: MeshProcess) -> None:
        self._cp = proc

    def backend(self, name: str, status: int = 200) -> MeshProcess:
        """helpers_mesh's tiny HTTP app answering every GET with ``name`` and ``status``."""
        return self.started(start_backend(self.tmp, name, status=status))

    def sidecar(self, service: str, version: str = "v1", **kw: Any) -> MeshProcess:
        """A sidecar of this control plane (``start_sidecar``'s keywords), ready."""
        proc = self.started(start_sidecar(self.tmp, self.cp.info["grpc"], service, version,
                                          **kw))
        self.sidecar_procs.append(proc)
        return proc

    def gateway(self, name: str, service: str = "gateway", *, port: int | None = None,
                extra: list[str] | None = None, **kw: Any) -> MeshProcess:
        """A gateway proxy registered as ``name``, listening on ``port`` (default: a free one)
        as ``info["gateway"]``."""
        listen = f"127.0.0.1:{port or free_port()}"
        proc = self.sidecar(service, mode="gateway", extra=[
            "--gateway-listen", listen, "--name", name, *(extra or [])], **kw)
        proc.info.update(name=name, gateway=listen)
        return proc

    def service(self, service: str, *versions: str, status: dict[str, int] | None = None,
                **kw: Any) -> dict[str, MeshProcess]:
        """Per version an app answering ``<service>-<version>`` (with ``status[version]``,
        default 200) behind its sidecar; the sidecars by version."""
        sidecars = {}
        for version in versions:
            app = self.backend(f"{service}-{version}", (status or {}).get(version, 200))
            sidecars[version] = self.sidecar(service, version, app=app.info["address"], **kw)
        return sidecars

    # -- waiting and declaring -----------------------------------------------------------------
    @property
    def names(self) -> set[str]:
        """The names the control plane lists this mesh's sidecars by."""
        return {p.info["name"] for p in self.sidecar_procs}

    def wait_synced(self, timeout: float = 30.0) -> None:
        """Until every sidecar is connected, ready and has ACKed its latest snapshot."""
        wait_for(lambda: all_synced(self.cp, self.names), timeout, "all proxies synced")

    def wait_certified(self, timeout: float = 20.0) -> None:
        """Until every registered proxy reports its workload certificate (the control plane
        then calls its admin listener over mTLS)."""
        wait_for(lambda: all(p["certExpiry"] for p in proxies(self.cp)), timeout,
                 "every certificate in the registry")

    def apply(self, *docs: str) -> int:
        """POST the documents to /api/v1/apply; the store revision they made."""
        return apply_yaml(self.cp, "---\n".join(docs))

    def sync(self, revision: int) -> None:
        """Until every sidecar runs the store at ``revision`` (the control plane's /sync)."""
        status, body = http_json(self.cp.info["api"]
                                 + f"/api/v1/sync?storeVersion={revision}&timeout=30",
                                 timeout=40.0)  # (the client's wait outlasts the server's)
        assert status == 200 and body["synced"], body

    def apply_synced(self, *docs: str) -> int:
        """``apply`` and wait until every sidecar runs it."""
        revision = self.apply(*docs)
        self.sync(revision)
        return revision

    # -- looking -------------------------------------------------------------------------------
    @staticmethod
    def via_gateway(gateway: MeshProcess, host: str, path: str = "/"
                    ) -> tuple[int, dict[str, str], bytes]:
        """A GET for ``host`` to ``gateway``'s listener (no redirect followed): status,
        headers (lower-case names) and body."""
        port = int(gateway.info["gateway"].rpartition(":")[2])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()

    @staticmethod
    def get(via: MeshProcess, host: str, path: str = "/",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """A request of ``via``'s app to ``host``, through ``via``'s outbound listener."""
        return http_get(f"http://{via.info['outbound']}{path}", {"Host": host, **(headers or {})})

    @staticmethod
    def metrics(proc: MeshProcess) -> str:
        """A proxy's Prometheus exposition (its admin /metrics)."""
        status, body = http_get(f"http://{proc.info['admin']}/metrics")
        assert status == 200, (status, body)
        return body.decode()

    def metric(self, proc: MeshProcess, name: str, **labels: str) -> float:
        """The sum of ``proc``'s samples of ``name`` with ``labels``."""
        return metric_value(self.metrics(proc), name, **labels)

    def meshctl_argv(self, *args: str) -> list[str]:
        """``meshctl --control-plane <api> ARGS`` (for a test that runs it itself)."""
        return [PYTHON, "-m", "meshctl", "--control-plane", self.cp.info["api"], *args]

    def meshctl_env(self, bare_env: bool | None = None) -> dict[str, str]:
        """The environment with the API token; ``bare_env`` (default: the class's): only the
        token and PATH=/usr/bin, not this process's environment."""
        token = {"AMI_TOKEN": self.cp.info["token"]}
        bare = self.bare_env if bare_env is None else bare_env
        return {**token, "PATH": "/usr/bin"} if bare else {**os.environ, **token}

    def meshctl(self, *args: str, timeout: float = 60, bare_env: bool | None = None
                ) -> subprocess.CompletedProcess[str]:
        """Run meshctl with ``args`` against this control plane, with the API token."""
        return subprocess.run(self.meshctl_argv(*args), capture_output=True, text=True,
                              cwd=ROOT, timeout=timeout, env=self.meshctl_env(bare_env))

    def close(self) -> None:
        """Stop every process and run every cleanup, last first, even when one fails."""
        errors: list[BaseException] = []
        if self._cp is not None and not all(p.alive() for p in self.sidecar_procs):
            print(self.cp.output())  # a sidecar died: the control plane's side of it
        while self._cleanups:
            try:
                self._cleanups.pop()()
            except Exception as exc:  # the rest must still stop
                errors.append(exc)
        if errors:
            raise errors[0]

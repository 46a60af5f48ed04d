"""`meshctl demo up` in the foreground: set up, start, wait until synced, run traffic, stop."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO, TypeVar

from meshctl.controlplane.registrystate import FILE_NAME as REGISTRY_FILE
from meshctl.demo import preflight, setup
from meshctl.demo.procs import DIRECT, pid_alive
from meshctl.demo.state import FAILED, READY, STOPPED, STOPPING, RunDir, RunState
from meshctl.demo.supervisor import StartError, Supervisor, Timing
from meshctl.demo.topology import (
    DEFAULT_API_PORT,
    GATEWAY,
    INSTANCES,
    Ports,
    local_paths,
    local_topology,
)
from meshctl.demo.traffic import TrafficGenerator

T = TypeVar("T")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
SUPERVISOR_HINT = "meshctl"  # in the supervisor's command line, to tell it from a reused pid


@dataclass(frozen=True, slots=True)
class DemoOptions:
    """Where the demo keeps its files and which ports it uses."""

    workdir: Path  # holds .ami/ (token, demo run dir); the CLI's current directory
    certs: Path
    ports: Ports = field(default_factory=Ports)
    traffic: bool = True
    timing: Timing = field(default_factory=Timing)
    routes: Path = setup.DEFAULT_ROUTES  # the resource set the control plane starts with

    @property
    def state_dir(self) -> Path:
        return self.workdir / ".ami"

    @property
    def run_dir(self) -> RunDir:
        return RunDir(self.state_dir / "demo")


def urls(ports: Ports) -> dict[str, str]:
    return {"productpage": f"http://127.0.0.1:{ports.gateway}/productpage",
            "dashboard": f"http://127.0.0.1:{ports.api}/",
            "controlPlane": f"http://127.0.0.1:{ports.api}"}


def cannot_start(opts: DemoOptions) -> str | None:
    """Why the demo cannot start, found before anything is created (`meshctl demo up: ...`,
    ready to print); None when it can."""
    paths = local_paths(opts.run_dir.path, opts.state_dir, opts.certs)
    found = preflight.problems(local_topology(opts.ports, paths), certs=opts.certs,
                               state_dir=opts.state_dir, routes=opts.routes)
    if not found:
        return None
    return "meshctl demo up: " + "\n".join(found) + "\nnothing was started or created."


def already_running(run_dir: RunDir) -> RunState | None:
    """The state of a demo whose supervisor still runs, if any."""
    state = run_dir.read()
    if (state and state.status not in (STOPPED, FAILED)
            and pid_alive(state.supervisor, SUPERVISOR_HINT)):
        return state
    return None


async def up(opts: DemoOptions, out: TextIO) -> int:
    """Run the demo until Ctrl-C/SIGTERM or until a process dies; 0 on a clean stop."""
    run_dir = opts.run_dir
    running = already_running(run_dir)
    if running:
        print(f"the demo is already running (supervisor pid {running.supervisor}); "
              "`meshctl demo down` stops it", file=out)
        return 1
    refused = cannot_start(opts)
    if refused:
        print(refused, file=out)
        return 1
    run_dir.path.mkdir(parents=True, exist_ok=True)
    paths = local_paths(run_dir.path, opts.state_dir, opts.certs)
    if setup.ensure_ca(opts.certs):
        print(f"created the mesh CA in {opts.certs}", file=out)
    setup.write_tokens(opts.certs, Path(paths.tokens))
    setup.seed_config(Path(paths.config), gateway_listen=f"127.0.0.1:{opts.ports.gateway}",
                      routes=opts.routes)
    # A fresh mesh, not a control-plane restart: an earlier demo's proxies are not restored.
    (Path(paths.state) / REGISTRY_FILE).unlink(missing_ok=True)
    state = RunState(supervisor=os.getpid(), urls=urls(opts.ports))
    run_dir.write(state)
    sup = Supervisor(local_topology(opts.ports, paths), run_dir, state, cwd=PROJECT_ROOT,
                     timing=opts.timing)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        return await _lifecycle(sup, opts, stop, out)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _lifecycle(sup: Supervisor, opts: DemoOptions, stop: asyncio.Event,
                     out: TextIO) -> int:
    started = time.monotonic()
    print("starting the control plane, 6 app instances with their sidecars and the gateway "
          f"(logs in {opts.run_dir.path})", file=out, flush=True)
    try:
        if not await _unless_stopped(sup.start(), stop):
            return await _shutdown(sup, opts, 130, out)
        if not await _unless_stopped(_wait_synced(opts, sup), stop):
            return await _shutdown(sup, opts, 130, out)
    except StartError as err:
        await sup.stop()
        error = str(err) + ("\n" + preflight.PORTS_HINT if err.name == "ports" else "")
        sup.state = replace(sup.state, status=FAILED, error=error)
        opts.run_dir.write(sup.state)
        print(f"meshctl demo up: {error}\nstopped everything that had started.", file=out)
        return 1
    sup.state = replace(sup.state, status=READY)
    opts.run_dir.write(sup.state)
    print(banner(opts, time.monotonic() - started), file=out, flush=True)
    gateway = f"http://127.0.0.1:{opts.ports.gateway}"
    traffic = asyncio.create_task(TrafficGenerator(gateway).run()) if opts.traffic else None
    died = asyncio.create_task(sup.wait_exit())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({died, stopped}, return_when=asyncio.FIRST_COMPLETED)
    for task in (traffic, died, stopped):
        if task is not None:
            task.cancel()
    if died.done() and not died.cancelled():
        print(f"meshctl demo: {died.result()}\nstopping everything.", file=out, flush=True)
        return await _shutdown(sup, opts, 1, out)
    return await _shutdown(sup, opts, 0, out)


async def _unless_stopped(work: Awaitable[T], stop: asyncio.Event) -> bool:
    """Run `work` unless a stop is requested first; False (work cancelled) if it was."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    if task.done():
        task.result()  # re-raises StartError
        return True
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return False


async def _shutdown(sup: Supervisor, opts: DemoOptions, code: int, out: TextIO) -> int:
    print("stopping the demo ...", file=out, flush=True)
    sup.state = replace(sup.state, status=STOPPING)
    opts.run_dir.write(sup.state)
    await sup.stop()
    sup.state = replace(sup.state, status=STOPPED)
    opts.run_dir.write(sup.state)
    print("stopped.", file=out, flush=True)
    return code


def expected_proxies() -> set[str]:
    return {i.name for i in INSTANCES} | {GATEWAY}


async def _wait_synced(opts: DemoOptions, sup: Supervisor) -> None:
    """Until proxy-status lists every sidecar and the gateway as synced (or a deadline)."""
    url = f"http://127.0.0.1:{opts.ports.api}/api/v1/proxies"
    deadline = time.monotonic() + opts.timing.ready_timeout
    exited = asyncio.create_task(sup.wait_exit())
    try:
        while True:
            missing = expected_proxies() - await asyncio.to_thread(_synced, url)
            if not missing:
                return
            if exited.done():
                raise exited.result()
            if time.monotonic() >= deadline:
                raise StartError("controlplane", "not every proxy is synced after "
                                 f"{opts.timing.ready_timeout:g} s: {', '.join(sorted(missing))}"
                                 " (see `meshctl proxy-status`)", opts.run_dir.log("controlplane"))
            await asyncio.wait({exited}, timeout=0.2)
    finally:
        exited.cancel()


def _synced(url: str) -> set[str]:
    """Names of the proxies the control plane reports as connected, ready and synced, with their
    app serving (so every endpoint is published before the demo says it is up)."""
    try:
        with DIRECT.open(url, timeout=2) as resp:
            body: dict[str, Any] = json.loads(resp.read())
    except (OSError, ValueError):
        return set()
    return {p.get("name", "") for p in body.get("proxies", [])
            if p.get("synced") and p.get("ready", True) and p.get("connected", True)
            and p.get("app") != "not_serving"}


def banner(opts: DemoOptions, took: float) -> str:
    u = urls(opts.ports)
    activate = Path(sys.prefix) / "bin" / "activate"
    after = (f"after `source {_shown(activate, opts.workdir)}`" if sys.prefix != sys.base_prefix
             and activate.exists() else "with meshctl on your PATH")
    # meshctl asks 127.0.0.1:15080 unless told: another --api-port must be named, or the next
    # commands would go to whatever runs there (another demo) or nowhere
    pointer = ("" if opts.ports.api == DEFAULT_API_PORT else
               f"  export AMI_CONTROL_PLANE={u['controlPlane']}".ljust(64)
               + "# this demo's API (--api-port)\n")
    return f"""
Bookinfo is up ({took:.1f} s): every sidecar ready and synced, every app serving,
mTLS {setup.mtls_mode(opts.routes)}.

  product page   {u['productpage']}   (log in as jason: top right)
  dashboard      {u['dashboard']}
  logs           {opts.run_dir.path}/<process>.log
{'  traffic        ~3 page loads/s, 30% as jason' if opts.traffic else ''}
Try next (in another terminal, in this directory, {after}):
{pointer}{_next_commands(opts)}  meshctl demo status

Ctrl-C stops everything.
"""


def _next_commands(opts: DemoOptions) -> str:
    """The banner's scenario commands, for the resource set the demo started from."""
    if opts.routes == setup.ISTIO_ROUTES:  # Istio's tasks, Istio's files
        istio = _shown(setup.ISTIO_DIR, opts.workdir)
        return f"""\
  meshctl apply -f {istio}/virtual-service-reviews-test-v2.yaml     # jason: black stars
  meshctl apply -f {istio}/virtual-service-ratings-test-abort.yaml  # jason: ratings fail
  meshctl get routes reviews -o yaml                        # what Ami made of the Istio YAML
  meshctl stat
  meshctl apply -f {istio}/default/virtual-service-all-v1.yaml      # back to the start
"""
    routes = _shown(setup.ROUTES_DIR, opts.workdir)
    return f"""\
  meshctl shift reviews 99/1
  meshctl apply -f {routes}/ratings-jason-abort.yaml
  meshctl stat
  meshctl routes ratings                                        # jason's calls apart (named rules)
  meshctl apply -f {routes}/all-v1.yaml      # back to the start
"""


def _shown(path: Path, workdir: Path) -> str:
    """`path` as the banner's commands give it: relative when under the directory the demo
    runs in (the usual `sample_apps/...`), else absolute, so that it works from there."""
    try:
        return str(path.relative_to(workdir.resolve()))
    except ValueError:
        return str(path)


"""The Bookinfo demo's processes: one description for `meshctl demo` and for compose.yaml.

Every process is a `ProcessSpec`: a command line written with the entry points `meshctl` and
`python` (the local supervisor runs both with the current interpreter), its environment, the
ports it binds, the URL that answers 200 once it is ready and the processes it waits for.
`local_topology` places everything on 127.0.0.1 in one port block; `compose_topology` uses the
fixed container ports (app 9080, sidecar inbound 15006 / outbound 15001 / admin 15000).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

NAMESPACE = "default"
DEFAULT_BASE_PORT = 15100
DEFAULT_GATEWAY_PORT = 8080
DEFAULT_API_PORT = 15080
DEFAULT_GRPC_PORT = 15012
DRAIN_TIMEOUT = "5"  # seconds; the demo stops traffic first, so drains are short


@dataclass(frozen=True, slots=True)
class Instance:
    """One Bookinfo app instance (service + version), e.g. reviews-v2."""

    service: str
    version: str

    @property
    def name(self) -> str:
        return f"{self.service}-{self.version}"


INSTANCES = (
    Instance("productpage", "v1"),
    Instance("details", "v1"),
    Instance("reviews", "v1"),
    Instance("reviews", "v2"),
    Instance("reviews", "v3"),
    Instance("ratings", "v1"),
)
GATEWAY = "gateway"
CONTROL_PLANE = "controlplane"


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One process of the demo: what to run, where it listens, how to tell it is ready."""

    name: str
    role: str  # controlplane | sidecar | gateway | app
    argv: tuple[str, ...]  # argv[0] is "meshctl" or "python"
    env: tuple[tuple[str, str], ...] = ()
    ports: tuple[tuple[str, str, int], ...] = ()  # (what, host, port) it binds
    ready_url: str | None = None
    after: tuple[str, ...] = ()  # names that must be ready before this one starts

    @property
    def environ(self) -> dict[str, str]:
        return dict(self.env)


@dataclass(frozen=True, slots=True)
class Ports:
    """The local port plan: control plane, gateway and a block of 4 ports per instance."""

    base: int = DEFAULT_BASE_PORT
    gateway: int = DEFAULT_GATEWAY_PORT
    api: int = DEFAULT_API_PORT
    grpc: int = DEFAULT_GRPC_PORT

    def instance(self, index: int) -> tuple[int, int, int, int]:
        """(app, inbound, outbound, admin) of the index-th instance: base + 10*index + 0..3."""
        first = self.base + 10 * index
        return first, first + 1, first + 2, first + 3

    def gateway_side(self) -> tuple[int, int]:
        """(outbound, admin) of the gateway proxy, after the instances' block."""
        first = self.base + 10 * len(INSTANCES)
        return first, first + 1


@dataclass(frozen=True, slots=True)
class Paths:
    """Files the processes read: CA dir, control-plane config and state dirs, bootstrap tokens."""

    certs: str
    config: str
    state: str
    tokens: str
    trust_bundle: str  # roots the proxies verify the control plane's TLS with

    def token(self, service: str) -> str:
        return f"{self.tokens}/{service}"


@dataclass(frozen=True, slots=True)
class _Addresses:
    app: str
    inbound: str
    outbound: str
    admin: str


def _sidecar(inst: Instance, a: _Addresses, control_plane: str, paths: Paths,
             after: tuple[str, ...]) -> ProcessSpec:
    argv = ("python", "-m", "proxy", "--control-plane", control_plane,
            "--service", inst.service, "--namespace", NAMESPACE,
            "--labels", f"app={inst.service},version={inst.version}", "--name", inst.name,
            "--inbound", a.inbound, "--outbound", a.outbound, "--admin", a.admin,
            "--app", a.app, "--token-file", paths.token(inst.service),
            "--ca-file", paths.trust_bundle, "--drain-timeout", DRAIN_TIMEOUT,
            *_advertise(a.inbound, inst.name))
    return ProcessSpec(
        name=f"{inst.name}-sidecar", role="sidecar", argv=argv,
        ports=tuple(_bind(what, addr) for what, addr in
                    (("inbound", a.inbound), ("outbound", a.outbound), ("admin", a.admin))),
        ready_url=f"http://{_reach(a.admin)}/ready", after=after)


def _advertise(listen: str, name: str) -> tuple[str, ...]:
    """The host the mesh reaches this proxy at: its listener's host locally; under compose
    (0.0.0.0) the service owning the network namespace, not the container's own hostname."""
    host = listen.rpartition(":")[0]
    return ("--advertise", name if host == "0.0.0.0" else host)


def _app(inst: Instance, a: _Addresses) -> ProcessSpec:
    env = {"PORT": a.app.rsplit(":", 1)[1], "HTTP_PROXY": f"http://{a.outbound}",
           "SERVICE_VERSION": inst.version, "PODNAME": inst.name, "PYTHONUNBUFFERED": "1"}
    return ProcessSpec(
        name=inst.name, role="app",
        argv=("python", "-m", f"sample_apps.bookinfo.{inst.service}"),
        env=tuple(sorted(env.items())), ports=(_bind("app", a.app),),
        ready_url=f"http://{a.app}/health", after=(f"{inst.name}-sidecar",))


def _gateway(listen: str, outbound: str, admin: str, control_plane: str, paths: Paths,
             after: tuple[str, ...]) -> ProcessSpec:
    argv = ("python", "-m", "proxy", "--mode", "gateway", "--control-plane", control_plane,
            "--service", GATEWAY, "--namespace", NAMESPACE, "--name", GATEWAY,
            "--labels", f"app={GATEWAY}",  # so Route rules can single it out (sourceLabels)
            "--gateway-listen", listen, "--outbound", outbound, "--admin", admin,
            "--token-file", paths.token(GATEWAY), "--ca-file", paths.trust_bundle,
            "--drain-timeout", DRAIN_TIMEOUT, *_advertise(admin, GATEWAY))
    return ProcessSpec(
        name=GATEWAY, role="gateway", argv=argv,
        ports=(_bind("listen", listen), _bind("outbound", outbound), _bind("admin", admin)),
        ready_url=f"http://{_reach(admin)}/ready", after=after)


def _control_plane(listen: str, grpc: str, paths: Paths,
                   extra: tuple[str, ...] = ()) -> ProcessSpec:
    argv = ("meshctl", "serve", "--config-dir", paths.config, "--state-dir", paths.state,
            "--listen", listen, "--grpc-listen", grpc, "--certs-dir", paths.certs, *extra)
    return ProcessSpec(
        name=CONTROL_PLANE, role="controlplane", argv=argv,
        ports=(_bind("api", listen), _bind("grpc", grpc)),
        ready_url=f"http://{_reach(listen)}/api/v1/proxies")


def local_topology(ports: Ports, paths: Paths) -> tuple[ProcessSpec, ...]:
    """Every process on 127.0.0.1, in start order (control plane, then sidecar before app)."""
    lo = "127.0.0.1"
    control_plane = f"{lo}:{ports.grpc}"
    specs = [_control_plane(f"{lo}:{ports.api}", control_plane, paths)]
    for index, inst in enumerate(INSTANCES):
        app, inbound, outbound, admin = ports.instance(index)
        a = _Addresses(f"{lo}:{app}", f"{lo}:{inbound}", f"{lo}:{outbound}", f"{lo}:{admin}")
        specs += [_sidecar(inst, a, control_plane, paths, (CONTROL_PLANE,)), _app(inst, a)]
    gw_out, gw_admin = ports.gateway_side()
    specs.append(_gateway(f"{lo}:{ports.gateway}", f"{lo}:{gw_out}", f"{lo}:{gw_admin}",
                          control_plane, paths, (CONTROL_PLANE,)))
    return tuple(specs)


# Three volumes: the CA (set-up and control plane only), the control plane's files, and what
# every proxy needs (bootstrap tokens and a copy of the trust bundle).
COMPOSE_PATHS = Paths(certs="/mesh/ca", config="/mesh/controlplane/config",
                      state="/mesh/controlplane/state", tokens="/mesh/bootstrap",
                      trust_bundle="/mesh/bootstrap/trust-bundle.pem")


def compose_topology() -> tuple[ProcessSpec, ...]:
    """The same processes as compose services: fixed container ports, names as hostnames.

    Inbound and admin bind 0.0.0.0 there: other containers call the inbound listener and
    Prometheus scrapes the admin listener; the app and the outbound listener stay on loopback.
    The API allows reads from other containers (Prometheus, the published dashboard).
    """
    control_plane = f"{CONTROL_PLANE}:{DEFAULT_GRPC_PORT}"
    specs = [_control_plane(f"0.0.0.0:{DEFAULT_API_PORT}", f"0.0.0.0:{DEFAULT_GRPC_PORT}",
                            COMPOSE_PATHS, ("--open-reads",))]
    a = _Addresses("127.0.0.1:9080", "0.0.0.0:15006", "127.0.0.1:15001", "0.0.0.0:15000")
    for inst in INSTANCES:
        specs += [_sidecar(inst, a, control_plane, COMPOSE_PATHS, (CONTROL_PLANE,)),
                  _app(inst, a)]
    specs.append(_gateway(f"0.0.0.0:{DEFAULT_GATEWAY_PORT}", "127.0.0.1:15001", "0.0.0.0:15000",
                          control_plane, COMPOSE_PATHS, (CONTROL_PLANE,)))
    return tuple(specs)


def local_paths(run_dir: Path, state_dir: Path, certs: Path) -> Paths:
    """Where the local demo keeps its CA, control-plane config and bootstrap tokens."""
    return Paths(certs=str(certs), config=str(run_dir / "config"), state=str(state_dir),
                 tokens=str(run_dir / "tokens"), trust_bundle=str(certs / "trust-bundle.pem"))


def services() -> tuple[str, ...]:
    """Every service that needs a bootstrap token (the apps' services and the gateway)."""
    return (*dict.fromkeys(i.service for i in INSTANCES), GATEWAY)


def by_name(specs: tuple[ProcessSpec, ...]) -> Mapping[str, ProcessSpec]:
    return {s.name: s for s in specs}


def _bind(what: str, address: str) -> tuple[str, str, int]:
    host, _, port = address.rpartition(":")
    return what, host, int(port)


def _reach(address: str) -> str:
    """An address to connect to: a wildcard bind is reached on loopback."""
    host, _, port = address.rpartition(":")
    return f"{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"

"""The demo topology: a consistent port plan and sidecar-before-app wiring for every instance."""

from __future__ import annotations

from pathlib import Path

from meshctl.demo.topology import (
    INSTANCES,
    Paths,
    Ports,
    ProcessSpec,
    by_name,
    compose_topology,
    local_topology,
)

PATHS = Paths(certs="/c", config="/cfg", state="/s", tokens="/t", trust_bundle="/c/tb.pem")


def flag(spec: ProcessSpec, name: str) -> str:
    return spec.argv[spec.argv.index(name) + 1]


def test_local_ports_are_unique_and_in_the_documented_block() -> None:
    """Every port is planned once; apps and proxies use base..base+61, plus api, grpc, gateway."""
    ports = Ports(base=20000, gateway=20500, api=20600, grpc=20700)
    planned = [p for s in local_topology(ports, PATHS) for _, _, p in s.ports]
    assert len(planned) == len(set(planned))
    block = set(planned) - {20500, 20600, 20700}
    assert min(block) >= 20000 and max(block) <= 20061
    assert all(host == "127.0.0.1" for s in local_topology(ports, PATHS) for _, host, _ in s.ports)


def test_six_instances_each_with_a_sidecar_started_first() -> None:
    """productpage, details, reviews v1-v3 and ratings each wait for their own ready sidecar."""
    specs = by_name(local_topology(Ports(), PATHS))
    assert [i.name for i in INSTANCES] == ["productpage-v1", "details-v1", "reviews-v1",
                                          "reviews-v2", "reviews-v3", "ratings-v1"]
    for inst in INSTANCES:
        app, sidecar = specs[inst.name], specs[f"{inst.name}-sidecar"]
        assert app.after == (sidecar.name,)
        assert sidecar.after == ("controlplane",)
        assert sidecar.ready_url is not None and sidecar.ready_url.endswith("/ready")


def test_apps_reach_the_mesh_only_through_their_own_sidecar() -> None:
    """An app's HTTP_PROXY is its sidecar's outbound, and the sidecar forwards to the app's port."""
    for specs in (by_name(local_topology(Ports(), PATHS)), by_name(compose_topology())):
        for inst in INSTANCES:
            app, sidecar = specs[inst.name], specs[f"{inst.name}-sidecar"]
            assert app.environ["HTTP_PROXY"] == f"http://{flag(sidecar, '--outbound')}"
            assert flag(sidecar, "--app").endswith(f":{app.environ['PORT']}")
            assert flag(sidecar, "--labels") == f"app={inst.service},version={inst.version}"
            assert app.environ["SERVICE_VERSION"] == inst.version
            assert app.environ["PODNAME"] == inst.name


def test_compose_uses_the_fixed_container_ports() -> None:
    """Under compose: app 9080, inbound 15006, outbound 15001, admin 15000; gateway on 8080."""
    specs = by_name(compose_topology())
    for inst in INSTANCES:
        sidecar = specs[f"{inst.name}-sidecar"]
        assert [(what, port) for what, _, port in sidecar.ports] == [
            ("inbound", 15006), ("outbound", 15001), ("admin", 15000)]
        assert specs[inst.name].environ["PORT"] == "9080"
        assert flag(sidecar, "--control-plane") == "controlplane:15012"
    assert flag(specs["gateway"], "--gateway-listen") == "0.0.0.0:8080"


def test_local_and_compose_run_the_same_commands() -> None:
    """Same processes, same flags and env names; only addresses and paths differ."""
    local = by_name(local_topology(Ports(), PATHS))
    compose = by_name(compose_topology())
    assert list(local) == list(compose)
    for name, spec in local.items():
        other = compose[name]
        options = [a for a in spec.argv if a.startswith("--")]
        assert [a for a in other.argv if a.startswith("--") and a != "--open-reads"] == options
        assert spec.environ.keys() == other.environ.keys()
        assert spec.argv[:3] == other.argv[:3]


def test_local_paths_are_used_for_tokens_and_config() -> None:
    """Each proxy reads its own service's bootstrap token; the control plane the seeded config."""
    specs = by_name(local_topology(Ports(), PATHS))
    assert flag(specs["reviews-v2-sidecar"], "--token-file") == "/t/reviews"
    assert flag(specs["gateway"], "--token-file") == "/t/gateway"
    assert flag(specs["controlplane"], "--config-dir") == "/cfg"


def test_the_gateway_gets_its_gateway_token_and_each_sidecar_its_service_token(
        tmp_path: Path) -> None:
    """The token files the local demo and compose's set-up write: the gateway's (what its
    --token-file names) is its gateway token, so the demo's gateway is a trusted gateway;
    every app service's is its plain service token (a sidecar refuses a gateway token)."""
    from meshctl.ca import BootstrapTokens, init_ca
    from meshctl.demo.setup import write_tokens
    from meshctl.demo.topology import GATEWAY, NAMESPACE, services

    init_ca(tmp_path / "certs")
    write_tokens(tmp_path / "certs", tmp_path / "tokens")
    tokens = BootstrapTokens.load(tmp_path / "certs")
    gateway = by_name(compose_topology())[GATEWAY]
    assert flag(gateway, "--token-file").rsplit("/", 1)[1] == GATEWAY
    kinds = {s: tokens.kind((tmp_path / "tokens" / s).read_text().strip(), NAMESPACE, s)
             for s in services()}
    assert kinds.pop(GATEWAY) == "gateway"
    assert set(kinds.values()) == {"service"} and len(kinds) == 4

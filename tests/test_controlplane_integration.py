"""Real processes: meshctl serve, sidecars in control-plane mode, and tiny backends."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshctl.api import mesh_pb2, mesh_pb2_grpc
from meshctl.ca import BootstrapTokens
from tests import meshbuilder
from tests.helpers_mesh import (
    PYTHON,
    ROOT,
    MeshProcess,
    all_synced,
    http_get,
    http_json,
    proxies,
    start_control_plane,
    wait_for,
)
from tests.proxyharness import metric_value
from tests.resources import destination_policy, mesh_config, route

pytestmark = pytest.mark.timeout(180)

class Mesh(meshbuilder.Mesh):
    """reviews v1 and v2 (v2's app declared HTTP/1.1) and a productpage client, mTLS off;
    1-minute workload certificates, so every sidecar renews every 30-42 s during the tests."""

    def build(self) -> Mesh:
        self.control_plane(mesh_config(mtls="DISABLE", certificateTTL="1m"),
                           destination_policy("reviews"))
        self.service("reviews", "v1")
        self.service("reviews", "v2", extra=["--app-protocol", "http1"])
        self.client = self.sidecar("productpage")
        return self

    def call(self) -> tuple[int, bytes]:
        return self.get(self.client, "reviews")

    def answers(self, n: int) -> set[bytes]:
        results = [self.call() for _ in range(n)]
        assert all(status == 200 for status, _ in results), results
        return {body for _, body in results}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(tmp_path_factory.mktemp("mesh")) as m:
        m.build().wait_synced(20)
        wait_for(lambda: len(m.answers(8)) == 2, 20, "both reviews versions reachable")
        yield m


def proxy_status_json(mesh: Mesh) -> list[dict[str, Any]]:
    out = subprocess.run([PYTHON, "-m", "meshctl", "--control-plane", mesh.cp.info["api"],
                          "proxy-status", "-o", "json"], capture_output=True, text=True,
                         cwd=ROOT, timeout=30, check=True)
    return list(json.loads(out.stdout))


class Load:
    """Calls reviews through the client in a thread until stopped; keeps every answer."""

    def __init__(self, mesh: Mesh) -> None:
        self.mesh = mesh
        self.answers: list[tuple[int, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(self.mesh.call())
            except OSError as exc:
                self.answers.append((-1, repr(exc).encode()))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def more(self, n: int, what: str) -> None:
        """Wait until ``n`` more answers came back."""
        seen = len(self.answers)
        wait_for(lambda: len(self.answers) >= seen + n, 30, what)

    def unexpected(self, body: bytes) -> dict[tuple[int, bytes], int]:
        """Each answer other than 200 ``body``, with its count."""
        counts: dict[tuple[int, bytes], int] = {}
        for answer in self.answers:
            if answer != (200, body):
                counts[answer] = counts.get(answer, 0) + 1
        return counts


def restart_control_plane(mesh: Mesh, **options: Any) -> None:
    """Start ``meshctl serve`` again on the same ports, config and state dirs."""
    api, grpc_addr = mesh.cp.info["api"], mesh.cp.info["grpc"]
    mesh.cp = start_control_plane(mesh.tmp, config_dir=mesh.cp.info["config_dir"],
                                  http_port=int(api.rpartition(":")[2]),
                                  grpc_port=int(grpc_addr.rpartition(":")[2]), **options)


def pushed(mesh: Mesh) -> float:
    exposition = http_get(mesh.cp.info["api"] + "/metrics")[1].decode()
    assert "ami_controlplane_pushed_total " in exposition
    return metric_value(exposition, "ami_controlplane_pushed_total")


def test_declared_route_steers_traffic(mesh: Mesh) -> None:
    """A Route applied through the API sends all traffic to subset v2 once /sync says so."""
    revision = mesh.apply(route("reviews", {"v1": 0, "v2": 100}))
    status, body = http_json(mesh.cp.info["api"] + f"/api/v1/sync?storeVersion={revision}"
                             "&timeout=30", timeout=40.0)
    assert status == 200 and body["synced"] and body["proxies"] == 3, body
    assert mesh.answers(20) == {b"reviews-v2"}
    # Asked again after the proxies ACKed: synced with no time to wait at all (timeout=0, so
    # no upper bound on how long the call took), but the change still took from the write to
    # the last ACK, which includes the reconciler's 100 ms debounce.
    status, again = http_json(mesh.cp.info["api"] + f"/api/v1/sync?storeVersion={revision}"
                              "&timeout=0")
    assert status == 200 and again["synced"] and again["converged_ms"] >= 100, again
    # ... and where that time went: the pass (after the debounce) pushed the 3 proxies, the
    # streams wrote the pushes, the last ACK came (meshctl.controlplane.timeline)
    phases = again["phases_ms"]
    assert phases["pushes"] == 3, again
    assert 100 <= phases["pass_started"] <= phases["queued"] <= phases["last_written"] \
        <= phases["last_acked"] <= again["converged_ms"], again
    listed = proxy_status_json(mesh)
    assert {p["name"] for p in listed} == mesh.names
    # every sidecar got its workload certificate over the control plane and reports its issue
    # time and expiry (`meshctl check` judges the time left against that lifetime)
    assert all(p["synced"] and p["configVersion"] and p["certExpiry"] for p in listed)
    assert all(p["certIssued"] and p["certIssued"] < p["certExpiry"] for p in listed)
    assert {p["version"] for p in listed if p["service"] == "reviews"} == {"v1", "v2"}
    # what each sidecar's app speaks, as --app-protocol said (auto when not given)
    assert sorted((p["service"], p["version"], p["appProtocol"]) for p in listed) == [
        ("productpage", "v1", "auto"), ("reviews", "v1", "auto"), ("reviews", "v2", "http1")]


def test_broken_file_keeps_traffic_and_reports_the_error(mesh: Mesh) -> None:
    """A hand edit with bad weights is rejected with a precise error and traffic is unchanged."""
    revision = mesh.apply(route("reviews", {"v1": 100, "v2": 0}))
    assert http_json(mesh.cp.info["api"] + f"/api/v1/sync?storeVersion={revision}",
                     timeout=40.0)[0] == 200  # (the server's wait: 30 s)
    for bad in ("nan", "inf", "soon"):  # a timeout that is no number of seconds
        assert http_json(mesh.cp.info["api"] + f"/api/v1/sync?timeout={bad}")[0] == 400
    assert mesh.answers(10) == {b"reviews-v1"}
    route_file = mesh.cp.info["config_dir"] / "route" / "default" / "reviews.yaml"
    route_file.write_text(route("reviews", {"v1": 60, "v2": 41}))

    def rejected() -> str | None:
        items = http_json(mesh.cp.info["api"] + "/api/v1/errors")[1]["items"]
        return next((i["message"] for i in items if i["source"].endswith("reviews.yaml")), None)

    message = wait_for(rejected, 10, "the broken file to be reported")
    assert "spec.rules[0].backends" in message and "weights sum to 101, must be 100" in message
    assert mesh.answers(20) == {b"reviews-v1"}
    assert all(p["synced"] for p in proxy_status_json(mesh))
    route_file.write_text(route("reviews", {"v1": 100, "v2": 0}))  # repair for the next tests
    wait_for(lambda: not rejected(), 10, "the repaired file to be accepted")


def test_nack_is_visible_in_proxy_status(mesh: Mesh) -> None:
    """A proxy that refuses a snapshot shows NACK with its error in proxy-status."""
    roots = (mesh.cp.info["certs_dir"] / "trust-bundle.pem").read_bytes()
    channel = grpc.secure_channel(mesh.cp.info["grpc"],
                                  grpc.ssl_channel_credentials(root_certificates=roots))
    stub = mesh_pb2_grpc.MeshControlStub(channel)
    token = BootstrapTokens.load(mesh.cp.info["certs_dir"]).token_for("default", "ratings")
    outbox: list[mesh_pb2.ProxyMessage] = [mesh_pb2.ProxyMessage(register=mesh_pb2.Register(
        name="ratings-v9-1", service="ratings", labels={"version": "v9"},
        inbound="127.0.0.1:1", admin="127.0.0.1:2", token=token))]
    sent = threading.Event()
    done = threading.Event()

    def requests() -> Iterator[mesh_pb2.ProxyMessage]:
        while not done.is_set():
            if outbox:
                yield outbox.pop(0)
            elif sent.wait(0.05):
                sent.clear()

    call = stub.StreamConfig(requests())
    try:
        first = next(iter(call))
        outbox.append(mesh_pb2.ProxyMessage(nack=mesh_pb2.Nack(
            version=first.version, nonce=first.nonce, error="routes[0].rules: simulated")))
        sent.set()

        def nacked() -> dict[str, Any] | None:
            return next((p for p in proxy_status_json(mesh)
                         if p["name"] == "ratings-v9-1" and p["nack"]), None)

        entry = wait_for(nacked, 10, "the NACK in proxy-status")
        assert entry["nack"] == "routes[0].rules: simulated" and not entry["synced"]
        table = subprocess.run([PYTHON, "-m", "meshctl", "--control-plane", mesh.cp.info["api"],
                                "proxy-status"], capture_output=True, text=True, cwd=ROOT,
                               timeout=30, check=True).stdout
        assert "NACK: routes[0].rules: simulated" in table
    finally:
        done.set()
        call.cancel()
        channel.close()


def settled(mesh: Mesh) -> Path:
    """Wait until the saved registry holds exactly this mesh's proxies, all synced: a proxy of
    an earlier test that is still listed changes everyone's snapshot when it leaves (its
    service goes too), and a restart could restore it. The registry file's path."""
    saved: Path = mesh.cp.info["state_dir"] / "registry.json"
    # The live registry first: a file read before it was saved with a leaving proxy still
    # listed (for --grace) would pass, and the restart would then restore that proxy.
    wait_for(lambda: {p["name"] for p in proxies(mesh.cp)} == mesh.names, 20,
             "the registry to list only this mesh's proxies")
    wait_for(lambda: {p["name"] for p in json.loads(saved.read_text())["proxies"]} == mesh.names,
             20, "the saved registry to hold only this mesh's proxies")
    wait_for(lambda: all_synced(mesh.cp, mesh.names), 20, "synced before the kill")
    return saved


def test_control_plane_restart_under_load_fails_nothing(mesh: Mesh) -> None:
    """Killing the control plane under load fails no request; a restart converges again.

    The restarted control plane restores its registry from the state dir, so the first sidecars
    to reconnect are not sent snapshots missing the ones still in their reconnect backoff: it
    pushes nothing at all, since every proxy's snapshot comes out unchanged.
    """
    settled(mesh)
    with Load(mesh) as load:
        load.more(50, "load running")
        mesh.cp.kill()
        load.more(50, "load continuing without control plane")
        restart_control_plane(mesh)
        wait_for(lambda: all_synced(mesh.cp, mesh.names), 30, "synced after the restart")
        load.more(50, "load after the restart")
    # Every answer, not only the last ones, follows the Route (v1: 100, v2: 0).
    assert not load.unexpected(b"reviews-v1"), load.unexpected(b"reviews-v1")
    assert pushed(mesh) == 0, "the restart pushed"
    # each sidecar's Register with the version it runs is its ACK of it: LAST-ACK is the
    # reconnection's time, not null (`-`) beside SYNCED
    listed = {p["name"]: p for p in proxy_status_json(mesh)}
    assert all(listed[n]["synced"] and listed[n]["lastAck"] for n in mesh.names), listed
    assert all(p.alive() for p in mesh.procs)
    assert mesh.answers(10) == {b"reviews-v1"}
    # Proxies of earlier tests that never come back stay listed, disconnected, for --warmup.
    assert {p["name"] for p in proxies(mesh.cp) if p["connected"]} == mesh.names


def test_rolled_back_control_plane_keeps_a_newer_ones_registry(mesh: Mesh) -> None:
    """A rollback: the control plane restarts on a registry.json that a newer version wrote,
    with a key it does not know at the top level and in every entry. It restores every proxy
    from what it understands (logging the unknown keys once), so the restart pushes nothing,
    as a restart on its own file does."""
    saved = settled(mesh)
    mesh.cp.kill()
    state = json.loads(saved.read_text())
    state["writtenBy"] = "9.0.0"
    for entry in state["proxies"]:
        entry["drain_state"] = "serving"
    saved.write_text(json.dumps(state))
    logged = len(mesh.cp.output())  # the restarted one appends to the same log
    restart_control_plane(mesh)
    wait_for(lambda: all_synced(mesh.cp, mesh.names), 30, "synced after the restart")
    assert pushed(mesh) == 0, "the restart pushed"
    log = mesh.cp.output()[logged:]
    assert f"restored {len(mesh.names)} proxies" in log, log
    assert log.count("keys this version does not know") == 1, log
    assert "drain_state, writtenBy (top level)" in log
    assert mesh.answers(10) == {b"reviews-v1"}


def test_restart_that_pushes_keeps_the_route(mesh: Mesh) -> None:
    """A restart whose restored registry changes every snapshot pushes twice under load (when
    a stale idle proxy is restored, and when it is dropped after --warmup) and no answer
    strays from the Route: a zero-weight subset gets nothing, no snapshot lacks the Route.
    """
    revision = mesh.apply(route("reviews", {"v1": 100, "v2": 0}))
    assert http_json(mesh.cp.info["api"] + f"/api/v1/sync?storeVersion={revision}",
                     timeout=40.0)[0] == 200  # (the server's wait: 30 s)
    wait_for(lambda: all_synced(mesh.cp, mesh.names), 20, "synced before the kill")
    with Load(mesh) as load:
        load.more(50, "load running")
        mesh.cp.kill()
        # A sidecar listed but never ready, as one that went away just before the crash: its
        # service appears (no endpoint) in every snapshot, until --warmup drops it.
        saved = mesh.cp.info["state_dir"] / "registry.json"
        state = json.loads(saved.read_text())
        state["proxies"].append({"name": "ratings-v9-stale", "service": "ratings",
                                 "labels": {"version": "v9"}, "inbound": "127.0.0.1:1",
                                 "admin": "127.0.0.1:2", "ready": False})
        saved.write_text(json.dumps(state))
        restart_control_plane(mesh, warmup=10.0)  # well above the 5 s longest reconnect backoff
        wait_for(lambda: all_synced(mesh.cp, mesh.names) and pushed(mesh) >= 3, 30,
                 "the restored idle proxy's service pushed to every sidecar")
        wait_for(lambda: "ratings-v9-stale" not in {p["name"] for p in proxies(mesh.cp)}, 30,
                 "the stale proxy dropped after --warmup")
        wait_for(lambda: all_synced(mesh.cp, mesh.names), 20, "synced without it")
        load.more(50, "load after the drop")
    assert pushed(mesh) >= 6  # both changes reached all three sidecars
    assert not load.unexpected(b"reviews-v1"), load.unexpected(b"reviews-v1")


def served_certificate(proc: MeshProcess) -> dict[str, Any]:
    """The certificate a sidecar serves, as its /config_dump shows it (with its renewals)."""
    status, dump = http_json(f"http://{proc.info['admin']}/config_dump")
    assert status == 200, dump
    return dict(dump["certificate"])


def shown_as_served(mesh: Mesh) -> bool:
    """Whether the control plane shows each sidecar's certificate as the sidecar serves it
    (`meshctl proxy-status -o json`)."""
    shown = {p["name"]: p for p in proxy_status_json(mesh)}
    for proc in mesh.sidecar_procs:
        served = served_certificate(proc)
        listed = shown[proc.info["name"]]
        if (listed["certExpiry"], listed["certIssued"]) != (served["notAfter"],
                                                            served["notBefore"]):
            return False
    return True


@pytest.mark.timeout(360)  # (its waits, each bounded, add up past the module's 180 s)
def test_renewed_certificates_are_shown_as_served_also_after_an_outage(mesh: Mesh) -> None:
    """certificateTTL 1m: a renewal falls due while the control plane is down, fails, and
    succeeds once it is back; every other sidecar renews too. Then the expiry the control
    plane shows (proxy-status, `meshctl check`) is the one each sidecar serves. It was one
    renewal behind: the sidecar reported each new certificate with the previous one's dates,
    so a healthy sidecar showed as expired."""
    settled(mesh)
    before = {p.info["name"]: served_certificate(p)["renewal"] for p in mesh.sidecar_procs}

    def renewal(proc: MeshProcess, key: str) -> int:
        return int(served_certificate(proc)["renewal"][key])

    mesh.cp.kill()
    failed = wait_for(lambda: next((p for p in mesh.sidecar_procs if renewal(p, "failures")
                                    > before[p.info["name"]]["failures"]), None), 60,
                      "a renewal failing while the control plane is down")
    restart_control_plane(mesh)
    wait_for(lambda: renewal(failed, "renewals") > before[failed.info["name"]]["renewals"], 60,
             "the failed renewal to succeed once the control plane is back")
    # Each renews by its own schedule (at 50-70% of 1m), or, if that fell in the outage, at its
    # next retry (full-jitter backoff up to 30 s): two lifetimes bound both on a loaded machine.
    try:
        wait_for(lambda: all(renewal(p, "renewals") > before[p.info["name"]]["renewals"]
                             for p in mesh.sidecar_procs), 120, "a renewal on every sidecar")
    except AssertionError as err:  # say where each stands
        now = {p.info["name"]: served_certificate(p)["renewal"] for p in mesh.sidecar_procs}
        raise AssertionError(f"{err}: {before} then {now}") from None
    wait_for(lambda: all_synced(mesh.cp, mesh.names), 30, "synced after the restart")
    wait_for(lambda: shown_as_served(mesh), 10, "the control plane to show each certificate "
             "the sidecar serves")
    check = mesh.meshctl("check")
    assert "certificate: expired" not in check.stdout, check.stdout

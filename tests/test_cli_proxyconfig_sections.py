"""`meshctl proxy-config SECTION NAME` against real processes: `meshctl serve`, reviews v1 and
v2 sidecars before apps whose answers a test sets, and a caller `web` sidecar. Each section
prints its rows; v2 answering 500 under consecutive5xxErrors 1 shows EJECTED; `secret` is the
served certificate without its key; an unknown section is a usage error."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from tests import meshbuilder
from tests.helpers_mesh import PYTHON, MeshProcess, http_get, proxies, wait_for
from tests.proxyharness import Backends
from tests.resources import destination_policy, documents, header_rule, route
from tests.traffic_backends import TrafficBackend, close_backends, start_backend

pytestmark = pytest.mark.timeout(180)

# One 5xx ejects for longer than the module runs; one of the two endpoints may be ejected.
POLICY = documents(
    destination_policy("reviews", ("v1", {"name": "v2", "loadBalancer": "RANDOM"}),
                       loadBalancer="ROUND_ROBIN",
                       connectionPool={"maxConnections": 50, "http": {"maxRetries": 2},
                                       "tcp": {"maxConnectionDuration": "1h",
                                               "tcpKeepalive": {}}},
                       outlierDetection={"consecutive5xxErrors": 1, "interval": "1s",
                                         "baseEjectionTime": "300s", "maxEjectionPercent": 50,
                                         "splitExternalLocalOriginErrors": True,
                                         "consecutiveLocalOriginFailures": 4}),
    route("reviews", {"v1": 50, "v2": 50}, rules=[header_rule("v1", name="jason")]))


class Mesh(meshbuilder.Mesh):
    """The processes, the apps by version, and meshctl against the control plane."""

    def build(self) -> Mesh:
        self.hub = Backends()
        self.apps: dict[str, TrafficBackend] = {}
        self.defer(lambda: close_backends(self.hub, self.apps.values()))
        self.sidecars: dict[str, MeshProcess] = {}
        self.home = self.tmp / "home"
        self.home.mkdir()
        self.control_plane(warmup=0.0)
        for version in ("v1", "v2"):
            app = self.apps[version] = start_backend(self.hub, version=version)
            self.sidecars[version] = self.sidecar("reviews", version, app=app.address)
        self.web = self.sidecars["web"] = self.sidecar("web")
        self.apply_synced(POLICY)
        self.wait_synced()
        self.wait_certified(30)
        return self

    def meshctl(self, *argv: str) -> subprocess.CompletedProcess[str]:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("AMI_")},
               "AMI_CONTROL_PLANE": self.cp.info["api"], "AMI_TOKEN": self.cp.info["token"],
               "HOME": str(self.home)}
        return subprocess.run([PYTHON, "-m", "meshctl", *argv], env=env, cwd=self.home,
                              capture_output=True, text=True, timeout=60)

    def shown(self, *argv: str) -> str:
        done = self.meshctl("proxy-config", *argv)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def call(self, headers: dict[str, str] | None = None) -> int:
        status, _ = http_get(f"http://{self.web.info['outbound']}/",
                             {"Host": "reviews", **(headers or {})})
        return status



@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with Mesh(tmp_path_factory.mktemp("pcsections")) as built:
        yield built.build()


def rows(text: str) -> list[list[str]]:
    """A table's lines split into cells (a cell may hold single spaces)."""
    return [[c.strip() for c in line.split("  ") if c.strip()]
            for line in text.splitlines() if line.strip()]


def test_routes_print_the_rules_and_filter_by_service_and_subset(mesh: Mesh) -> None:
    web = mesh.web.info["name"]
    table = rows(mesh.shown("routes", web))
    assert table[0] == ["HOST", "RULE", "MATCH", "ACTION"]
    assert table[1:] == [
        ["reviews", "jason", "header end-user exact jason", "reviews/v1 100%"],
        ["reviews", "#1", "*", "reviews/v1 50%, reviews/v2 50%"],
        ["web", "-", "*", "web (all endpoints)"]]
    assert rows(mesh.shown("routes", web, "--service", "reviews"))[1:] == table[1:3]
    # the rules sending traffic to v2 only
    assert rows(mesh.shown("routes", web, "--fqdn", "reviews.default.svc.cluster.local",
                           "--subset", "v2"))[1:] == [table[2]]
    data = json.loads(mesh.shown("routes", web, "--service", "reviews", "-o", "json"))
    assert list(data) == ["routes"] and list(data["routes"]) == ["reviews"]


def test_endpoints_listeners_and_clusters_print_their_rows(mesh: Mesh) -> None:
    web = mesh.web.info["name"]
    assert mesh.call() == 200  # an endpoint reached: its pool keeps the connection
    v1, v2 = (mesh.sidecars[v].info["inbound"] for v in ("v1", "v2"))
    table = rows(mesh.shown("endpoints", web, "--service", "reviews"))
    assert table[0] == ["SERVICE", "ADDRESS", "VERSION", "IDENTITY", "STATUS", "ACTIVE"]
    identity = "spiffe://cluster.local/ns/default/sa/reviews"
    assert sorted(row[:5] for row in table[1:]) == sorted(
        [["reviews", v1, "v1", identity, "HEALTHY"], ["reviews", v2, "v2", identity,
                                                      "HEALTHY"]])
    assert all(row[5].endswith(" conn") and " req/" in row[5] for row in table[1:])
    assert [row[1] for row in rows(mesh.shown("ep", web, "--subset", "v2"))[1:]] == [v2]
    data = json.loads(mesh.shown("ep", web, "--service", "reviews", "-o", "json"))
    assert list(data) == ["services", "endpointHealth"]
    # v1's through the service's destination; v2 a destination of its own (a policy field)
    assert {d: [e["address"] for e in h["endpoints"]]
            for d, h in data["endpointHealth"].items()} == {"reviews": [v1], "reviews/v2": [v2]}

    listeners = rows(mesh.shown("listeners", web))
    assert listeners[0] == ["LISTENER", "ADDRESS", "MODE", "TLS", "CONNECTIONS", "LIMIT"]
    by_name = {row[0]: row for row in listeners[1:]}
    assert set(by_name) == {"inbound", "outbound", "admin"}
    assert by_name["inbound"][1:4] == [mesh.web.info["inbound"], "inbound", "mTLS STRICT"]
    assert by_name["outbound"][1:3] == [mesh.web.info["outbound"], "outbound"]
    assert by_name["admin"][1:3] == [mesh.web.info["admin"], "admin"]
    assert int(by_name["admin"][4]) >= 1  # the control plane's call asking for the dump

    clusters = rows(mesh.shown("clusters", web, "--service", "reviews"))
    assert clusters[0] == ["DESTINATION", "LB", "OUTLIER DETECTION", "PANIC",
                           "CONNECTION LIMITS", "MTLS", "HEALTHY"]
    outlier = "5xx 1, local 4 · every 1s · eject 300s · max 50%"
    limits = "conn 50 · pending 1024 · requests 1024 · retries 2 · max age 3600s · keepalive"
    assert clusters[1:] == [
        ["reviews", "ROUND_ROBIN", outlier, "-", limits, "STRICT", "2/2"],
        ["reviews/v1", "ROUND_ROBIN", outlier, "-", limits, "STRICT", "1/1"],
        ["reviews/v2", "RANDOM", outlier, "-", limits, "STRICT", "1/1"]]
    assert rows(mesh.shown("clusters", web, "--subset", "v2"))[1:] == [clusters[3]]


def test_secret_is_the_served_certificate_without_its_key(mesh: Mesh) -> None:
    web = mesh.web.info["name"]
    text = mesh.shown("secret", web)
    lines = dict(line.split(":", 1) for line in text.splitlines()[:7] if ":" in line)
    assert lines["SPIFFE ID"].strip() == "spiffe://cluster.local/ns/default/sa/web"
    not_after = lines["Not after"].split()[0]
    expiry = dt.datetime.strptime(not_after, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    assert expiry > dt.datetime.now(tz=dt.UTC)
    assert "left)" in lines["Not after"]
    # the one the control plane issued (its registry has the expiry the sidecar reported)
    assert {p["name"]: p["certExpiry"] for p in proxies(mesh.cp)}[web] == not_after
    assert lines["Chain"].strip().startswith("2 certificates")  # leaf + intermediate
    assert "TRUST BUNDLE ROOTS" in text and "Ami root CA" in text
    for shown in (text, mesh.shown("secret", web, "-o", "yaml"),
                  mesh.shown(web, "-o", "json")):
        assert "PRIVATE KEY" not in shown and "key_pem" not in shown
    data = json.loads(mesh.shown("secret", web, "-o", "json"))
    assert list(data) == ["certificate"]
    assert data["certificate"]["notAfter"] == not_after
    assert data["certificate"]["secondsLeft"] > 0


def test_an_ejected_endpoint_shows_ejected(mesh: Mesh) -> None:
    """v2 answers 500: the first 500 through web ejects it (consecutive5xxErrors 1) for
    300 s; `endpoints --status ejected` lists it EJECTED with its time left, `--status
    healthy` only v1, clusters count it, and the whole page shows it too."""
    web = mesh.web.info["name"]
    v1, v2 = (mesh.sidecars[v].info["inbound"] for v in ("v1", "v2"))
    assert mesh.shown("endpoints", web, "--status", "ejected") == "(none)\n"
    mesh.apps["v2"].status = 500
    # the unnamed rule sends half of the calls to v2: its first 500 ejects it
    wait_for(lambda: mesh.call() == 500, 30, "v2's 500 through web")
    ejected = rows(mesh.shown("endpoints", web, "--status", "ejected"))
    assert [row[:3] for row in ejected[1:]] == [["reviews", v2, "v2"]]
    # subset v2 sets a policy field of its own: its own destination, its own ejections
    status = ejected[1][4]
    assert status.startswith("v2:EJECTED (") and status.endswith(" left)"), status
    healthy = rows(mesh.shown("endpoints", web, "--service", "reviews", "--status",
                              "healthy"))
    assert [(row[1], row[4]) for row in healthy[1:]] == [(v1, "HEALTHY")]
    assert [row[-1] for row in rows(mesh.shown("clusters", web, "--service", "reviews"))
            [1:]] == ["1/2", "1/1", "0/1"]
    page = mesh.shown(web)
    assert any(v2 in line and "EJECTED (" in line for line in page.splitlines())
    [entry] = json.loads(mesh.shown("ep", web, "-o", "json"))["endpointHealth"][
        "reviews/v2"]["endpoints"]
    assert entry["address"] == v2 and entry["status"] == "EJECTED"
    assert 0 < entry["ejectedSeconds"] <= 300 and entry["panic"] is False


def test_unknown_section_and_misplaced_filters_are_usage_errors(mesh: Mesh) -> None:
    web = mesh.web.info["name"]
    unknown = mesh.meshctl("proxy-config", "clusterz", web)
    assert unknown.returncode == 2
    assert "unknown section 'clusterz'" in unknown.stderr
    assert mesh.meshctl("proxy-config", "routes", web, "--status", "ejected").returncode == 2
    assert mesh.meshctl("proxy-config", "secret", web, "--service", "reviews").returncode == 2
    assert mesh.meshctl("proxy-config", web, "--subset", "v1").returncode == 2
    assert mesh.meshctl("proxy-config", "routes", web, "extra").returncode == 2
    # the whole page and the log form are as they were
    assert mesh.shown(web).startswith("Config version:")
    assert rows(mesh.shown("log", web))[0] == ["LOGGER", "LEVEL"]

"""ExternalService through a real control plane and real sidecars (mTLS STRICT, the default,
REGISTRY_ONLY): local servers stand in for the outside hosts, reached by a declared name."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.grpcapp import EchoServer, channel, method, serving_in_thread
from tests.helpers_mesh import apply_yaml, http_get, wait_for
from tests.meshbuilder import Mesh
from tests.proxyharness import metric_value
from tests.test_traffic_tls_origination import self_signed

pytestmark = pytest.mark.timeout(180)

DECLARED = """\
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {{name: partner}}
spec:
  hosts: [api.partner.test]
  ports: [{{number: {api}, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {{name: hung}}
spec:
  hosts: [hung.partner.test]
  ports: [{{number: {hung}, protocol: HTTP}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {{name: hung}}
spec:
  host: hung.partner.test
  rules: [{{backends: [{{}}], timeout: 300ms}}]
"""


class EgressMesh(Mesh):
    """A control plane, an outside HTTP server, a server that never answers, and a client
    sidecar with no ExternalService applied yet."""

    bare_env = True

    def build(self) -> EgressMesh:
        self.control_plane(warmup=0.0)
        self.api = self.backend("partner-api")
        self.api_port = int(self.api.info["address"].rpartition(":")[2])
        self.hung = socket.socket()  # accepts connections (backlog), never answers
        self.defer(self.hung.close)
        self.hung.bind(("127.0.0.1", 0))
        self.hung.listen(8)
        self.hung_port = int(self.hung.getsockname()[1])
        self.client = self.sidecar("productpage")
        return self

    def call(self, host: str) -> tuple[int, bytes]:
        return self.get(self.client, host)


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EgressMesh]:
    with EgressMesh(tmp_path_factory.mktemp("egress")) as m:
        m.build().wait_synced()
        yield m


def test_declared_hosts_pass_and_others_are_refused(mesh: EgressMesh) -> None:
    api = f"api.partner.test:{mesh.api_port}"
    status, body = mesh.call(api)
    assert (status, b"no_route" in body) == (404, True), "REGISTRY_ONLY: refused before"
    mesh.apply_synced(DECLARED.format(api=mesh.api_port, hung=mesh.hung_port))
    # Plaintext to the outside host although the mesh is STRICT mTLS: no sidecar there.
    assert mesh.call(api) == (200, b"partner-api")
    status, body = mesh.call(f"other.partner.test:{mesh.api_port}")
    assert status == 404 and b"no_route" in body
    status, body = mesh.call(f"api.partner.test:{mesh.api_port + 1}")  # undeclared port
    assert status == 404 and b"no_route" in body


def test_a_route_timeout_applies_to_an_external_host(mesh: EgressMesh) -> None:
    mesh.apply_synced(DECLARED.format(api=mesh.api_port, hung=mesh.hung_port))
    status, body = mesh.call(f"hung.partner.test:{mesh.hung_port}")
    assert status == 504 and b"timeout" in body


def test_metrics_and_meshctl_name_the_external_host(mesh: EgressMesh) -> None:
    mesh.apply_synced(DECLARED.format(api=mesh.api_port, hung=mesh.hung_port))
    assert mesh.call(f"api.partner.test:{mesh.api_port}")[0] == 200
    _, metrics = http_get(f"http://{mesh.client.info['admin']}/metrics")
    assert any('destination_service="api.partner.test"' in line and 'response_code="200"' in line
               and 'connection_security_policy="none"' in line
               for line in metrics.decode().splitlines() if line.startswith("ami_requests_total"))
    listed = mesh.meshctl("get", "es")
    assert listed.returncode == 0, listed.stderr
    assert ["partner", "api.partner.test", f"{mesh.api_port}/HTTP", "127.0.0.1"] == \
        next(line.split() for line in listed.stdout.splitlines()
             if line.startswith("partner "))[:4]
    assert "hung" in mesh.meshctl("get", "externalservices").stdout
    config = mesh.meshctl("proxy-config", mesh.client.info["name"])
    assert config.returncode == 0, config.stderr
    assert "EXTERNAL SERVICES" in config.stdout
    assert any(line.split()[:3] == ["api.partner.test", f"{mesh.api_port}/HTTP", "127.0.0.1"]
               for line in config.stdout.splitlines())
    seen: list[str] = []

    def stat_names_it() -> bool:
        """Once the control plane scraped a request (every 2 s; on a loaded machine the one
        above may not be scraped yet, as CI saw): a call each time keeps one in the window."""
        assert mesh.call(f"api.partner.test:{mesh.api_port}")[0] == 200
        stat = mesh.meshctl("stat")
        assert stat.returncode == 0, stat.stderr
        seen.append(stat.stdout)
        return "api.partner.test" in stat.stdout
    try:
        wait_for(stat_names_it, 30, "meshctl stat naming the external host")
    except AssertionError as err:
        raise AssertionError(f"{err}; last stat:\n{seen[-1] if seen else ''}") from None


def test_deleting_the_external_service_restores_the_refusal(mesh: EgressMesh) -> None:
    mesh.apply_synced(DECLARED.format(api=mesh.api_port, hung=mesh.hung_port))
    deleted = mesh.meshctl("delete", "externalservice", "partner")
    assert deleted.returncode == 0, deleted.stderr
    wait_for(lambda: mesh.call(f"api.partner.test:{mesh.api_port}")[0] == 404, 15,
             "the sidecar refusing the host again")


def test_deleting_an_external_service_closes_its_open_tunnels(mesh: EgressMesh) -> None:
    """A withdrawn declaration does not stay open as long as a client keeps its tunnel: the
    sidecar closes the tunnels to a deleted ExternalService's ports (Istio drains them with the
    listener's filter chain)."""
    mesh.apply_synced("apiVersion: ami.mesh/v1alpha1\nkind: ExternalService\nmetadata: {name: db}\n"
               f"spec: {{hosts: [db.partner.test], ports: [{{number: {mesh.hung_port}, "
               "protocol: TCP}], endpoints: [{address: 127.0.0.1}]}\n")
    host, _, port = mesh.client.info["outbound"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as tunnel:
        target = f"db.partner.test:{mesh.hung_port}"
        tunnel.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += tunnel.recv(1)
        assert head.startswith(b"HTTP/1.1 200"), head
        deleted = mesh.meshctl("delete", "externalservice", "db")
        assert deleted.returncode == 0, deleted.stderr
        tunnel.settimeout(15)  # the deadline: EOF must come well before
        assert tunnel.recv(1) == b"", "the tunnel outlived its ExternalService"
    status, body = mesh.call(f"db.partner.test:{mesh.hung_port}")
    assert status == 404 and b"no_route" in body


def test_deleting_a_wildcard_external_service_closes_its_open_tunnels(
        mesh: EgressMesh) -> None:
    """A wildcard's tunnels go to hosts no snapshot names: they stay open across unrelated
    config changes while the wildcard still allows them, and close once it is deleted."""
    wildcard = ("apiVersion: ami.mesh/v1alpha1\nkind: ExternalService\nmetadata: {name: wild}\n"
                # resolved by the requested name: an IPv4 literal ending in .0.0.1
                f"spec: {{hosts: ['*.0.0.1'], ports: [{{number: {mesh.api_port}, "
                "protocol: TCP}]}\n")
    mesh.apply_synced(wildcard)
    host, _, port = mesh.client.info["outbound"].rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as tunnel:
        target = f"127.0.0.1:{mesh.api_port}"
        tunnel.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        assert _read_head(tunnel).startswith(b"HTTP/1.1 200")

        def through_the_tunnel() -> bytes:
            tunnel.sendall(b"GET / HTTP/1.1\r\nHost: partner\r\n\r\n")
            head = _read_head(tunnel)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            return _read_exactly(tunnel, length)

        assert through_the_tunnel() == b"partner-api"
        mesh.apply_synced("apiVersion: ami.mesh/v1alpha1\nkind: ExternalService\nmetadata: "
                   "{name: unrelated}\nspec: {hosts: [unrelated.partner.test], ports: "
                   "[{number: 1, protocol: TCP}], endpoints: [{address: 127.0.0.1}]}\n")
        assert through_the_tunnel() == b"partner-api"  # still allowed: still open
        for name in ("wild", "unrelated"):
            deleted = mesh.meshctl("delete", "externalservice", name)
            assert deleted.returncode == 0, deleted.stderr
        tunnel.settimeout(15)  # the deadline: EOF must come well before
        assert tunnel.recv(1) == b"", "the tunnel outlived its wildcard ExternalService"


def _read_head(sock: socket.socket) -> bytes:
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        assert byte, f"closed after {head!r}"
        head += byte
    return head


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "closed mid-body"
        data += chunk
    return data


def test_tls_origination_from_resources_and_a_refused_ca_file(mesh: EgressMesh,
                                                              tmp_path: Path) -> None:
    """ExternalService port 80 with `targetPort` and a DestinationPolicy `tls: {mode: SIMPLE}`:
    the app's plain `http://secure.partner.test/` reaches an HTTPS server through the sidecar.
    A caCertificates file the sidecar cannot read is NACKed, the error in proxy-status, and
    the last good config keeps serving."""
    import http.server
    import ssl
    import threading

    cert, key = self_signed(tmp_path, "secure.partner.test")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"over {self.connection.version()}".encode()  # type: ignore[attr-defined]
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    declared = ("apiVersion: ami.mesh/v1alpha1\nkind: ExternalService\nmetadata: {name: sec}\n"
                "spec:\n  hosts: [secure.partner.test]\n"
                f"  ports: [{{number: 80, protocol: HTTP, targetPort: {server.server_port}}}]\n"
                "  endpoints: [{address: 127.0.0.1}]\n---\n"
                "apiVersion: ami.mesh/v1alpha1\nkind: DestinationPolicy\nmetadata: {name: sec}\n"
                "spec:\n  host: secure.partner.test\n"
                "  tls: {mode: SIMPLE, caCertificates: %s}\n")
    try:
        mesh.apply_synced(declared % cert)
        assert mesh.call("secure.partner.test") == (200, b"over TLSv1.3")
        missing = tmp_path / "gone.pem"
        apply_yaml(mesh.cp, declared % missing)

        def nacked() -> str:
            out = mesh.meshctl("proxy-status", "-o", "json")
            assert out.returncode == 0, out.stderr
            [status] = [p for p in json.loads(out.stdout)
                        if p["name"] == mesh.client.info["name"]]
            return str(status["nack"] or "")

        wait_for(lambda: "gone.pem" in nacked(), 15, "the NACK in proxy-status")
        assert f"tls.caCertificates {missing}: No such file or directory" in nacked()
        assert mesh.call("secure.partner.test") == (200, b"over TLSv1.3")  # still the last good
    finally:
        mesh.meshctl("delete", "destinationpolicy", "sec")
        mesh.meshctl("delete", "externalservice", "sec")
        server.shutdown()


GRPC_DECLARED = """\
apiVersion: ami.mesh/v1alpha1
kind: ExternalService
metadata: {{name: speech}}
spec:
  hosts: [secure.partner.test]
  ports: [{{number: 50051, protocol: GRPC, targetPort: {port}}}]
  endpoints: [{{address: 127.0.0.1}}]
---
apiVersion: ami.mesh/v1alpha1
kind: DestinationPolicy
metadata: {{name: speech}}
spec:
  host: secure.partner.test
  tls: {{mode: SIMPLE, caCertificates: {ca}}}
---
apiVersion: ami.mesh/v1alpha1
kind: Route
metadata: {{name: speech}}
spec:
  host: secure.partner.test
  rules:
    - matches: [{{path: {{exact: /ami.test.Echo/Slow}}}}]
      backends: [{{}}]
      timeout: 300ms
    - backends: [{{}}]
      retries: {{attempts: 2, retryOn: [unavailable]}}
"""


async def test_grpc_to_an_outside_host_with_tls_origination(mesh: EgressMesh,
                                                            tmp_path: Path) -> None:
    """ExternalService `GRPC` port, DestinationPolicy `tls` and a Route, through the control
    plane: a grpcio app's h2c calls reach a gRPC server behind TLS (ALPN h2), the Route's
    retry and timeout apply per call, and the calls are counted under the host with their
    grpc-status."""
    cert, key = self_signed(tmp_path, "secure.partner.test")
    server = EchoServer("outside", tls=(key.read_bytes(), cert.read_bytes()))
    with serving_in_thread(server):
        try:
            mesh.apply_synced(GRPC_DECLARED.format(port=server.port, ca=cert))
            async with channel(int(mesh.client.info["outbound"].rpartition(":")[2]),
                               "secure.partner.test:50051") as ch:
                answer = json.loads(await method(ch, "Unary")(b"hi", timeout=10))
                streamed = [m async for m in method(ch, "Stream", "unary_stream")(
                    b"2", timeout=10)]
                flaky = await method(ch, "Flaky")(b"once", timeout=10)  # retried once
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await method(ch, "Slow")(b"5", timeout=10)
        finally:
            for kind in ("route", "destinationpolicy", "externalservice"):
                mesh.meshctl("delete", kind, "speech")
    assert answer["server"] == "outside"
    assert streamed == [b"outside-0", b"outside-1"] and flaky == b"outside"
    assert server.calls == 5  # Unary, Stream, Flaky twice, Slow
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "timeout" in (err.value.details() or "")
    _, metrics = http_get(f"http://{mesh.client.info['admin']}/metrics")
    labels = {"destination_service": "secure.partner.test", "connection_security_policy": "none"}
    assert metric_value(metrics.decode(), "ami_requests_total", grpc_response_status="0",
                        **labels) == 3
    assert metric_value(metrics.decode(), "ami_requests_total", response_code="504",
                        response_flags="timeout", **labels) == 1

"""Hostile peers against the inbound listener of a TCP app's sidecar: raw sockets speaking
`ami-tcp` badly, in plaintext after the preamble (as anyone who reaches the port under
PERMISSIVE can) and over mTLS. Each is closed with a reason in the metrics and the access log,
the app never sees a byte of garbage, memory stays bounded, and nothing is left open."""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from meshctl.ca import CertificateAuthority, init_ca
from proxy.tcpflush import FLUSH_GRACE
from proxy.tcpwire import FIN, HEADER, PREAMBLE, first_frame
from tests.helpers_mesh import MeshProcess, wait_for
from tests.proxyharness import ProxyProcess, every_count_logged, free_port, metric_value
from tests.tcpapp import start_tcp_app
from tests.test_mtls_static import TD, client_ctx, mint, start_proxy

pytestmark = pytest.mark.timeout(120)
TIMEOUT = 10.0
HEADER_TIMEOUT = 1.0  # the db sidecar's --header-timeout: how long a hello may take
MAX_CONNECTIONS = 6  # the db sidecar's --max-connections


@dataclass
class Db:
    """A TCP app (tests.tcpapp: a banner, then an echo) behind a static PERMISSIVE sidecar."""

    sidecar: ProxyProcess
    inbound: int
    app: MeshProcess
    ca: CertificateAuthority

    def metrics(self) -> str:
        return self.sidecar.get("/metrics")[1].decode()

    def closed(self, flags: str) -> float:
        return metric_value(self.metrics(), "ami_tcp_connections_closed_total",
                            reporter="destination", response_flags=flags)

    def open_now(self) -> tuple[float, float]:
        """Open inbound connections, and TCP sessions opened but not closed."""
        text = self.metrics()
        return (metric_value(text, "ami_downstream_connections_active", listener="inbound"),
                metric_value(text, "ami_tcp_connections_opened_total")
                - metric_value(text, "ami_tcp_connections_closed_total"))

    def sockets(self) -> list[tuple[int, int]]:
        """The sidecar's open sockets of TCP connections, from callers or to the app: (local,
        remote) ports, whatever their state (a closed socket still flushing counts)."""
        assert self.sidecar.proc is not None
        fd_dir = Path(f"/proc/{self.sidecar.proc.pid}/fd")
        inodes = set()
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed meanwhile
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        app_port = int(self.app.info["address"].rsplit(":", 1)[1])
        found = []
        for local, remote, state, inode in tcp_table():
            if inode in inodes and state != "0A" and (local == self.inbound
                                                      or remote == app_port):
                found.append((local, remote))
        return found

    def rss_kb(self) -> int:
        assert self.sidecar.proc is not None
        for line in Path(f"/proc/{self.sidecar.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.sidecar.stdout().splitlines()
                if line.startswith("{")]

    def all_logged(self) -> bool:
        return every_count_logged(self.metrics(), len(self.log_lines()))

    def last_line_after(self, seen: int) -> dict[str, object]:
        """The last access-log line, once there are more than ``seen``."""
        return wait_for(lambda: self.log_lines()[seen:], TIMEOUT, "its access-log line")[-1]

    def app_eofs(self) -> list[int]:
        """What the app received on each connection that ended (its `eof N` lines)."""
        return [int(line.split()[1]) for line in self.app.output().splitlines()
                if line.startswith("eof ")]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Db]:
    tmp = tmp_path_factory.mktemp("tcphostile")
    init_ca(tmp / "ca", TD)
    ca = CertificateAuthority(tmp / "ca")
    app = start_tcp_app(tmp, "db")
    inbound = free_port()
    sidecar = None
    try:
        sidecar = start_proxy(tmp / "db", mint(ca, "db"), {
            "node": {"service": "db", "labels": {"version": "v1"}},
            "app": app.info["address"], "appProtocol": "tcp",
            "mesh": {"mtls": "PERMISSIVE", "accessLog": True}},
            inbound=inbound, extra=("--header-timeout", str(HEADER_TIMEOUT),
                                    "--max-connections", str(MAX_CONNECTIONS)))
        yield Db(sidecar, inbound, app, ca)
    finally:
        if sidecar is not None:
            sidecar.stop()
        app.stop()


@pytest.fixture
def baseline(db: Db) -> Iterator[None]:
    """Each test ends as it began: nothing open on the sidecar, /ready 200, and a
    well-behaved caller still served."""
    wait_for(lambda: db.open_now() == (0, 0), TIMEOUT, "no connection open before the test")
    wait_for(db.all_logged, TIMEOUT, "every earlier connection's access-log line")
    yield
    wait_for(lambda: db.open_now() == (0, 0), TIMEOUT, "every connection closed")
    # (a socket whose reader stopped reading is reset after the flush grace)
    wait_for(lambda: not db.sockets(), TIMEOUT + FLUSH_GRACE, "the sidecar's sockets closed")
    assert db.sidecar.get("/ready")[0] == 200
    with Peer.open(db) as peer:
        peer.well_behaved()


class Peer:
    """A raw `ami-tcp` caller: plaintext after the preamble (or mTLS, ALPN `ami-tcp`)."""

    def __init__(self, sock: socket.socket, preamble: bytes) -> None:
        self.sock = sock
        self.preamble = preamble  # what opens the stream: PREAMBLE in plaintext
        self.pending = b""  # the app's bytes read, not yet asked for

    @classmethod
    def open(cls, db: Db, tls: ssl.SSLContext | None = None) -> Peer:
        sock = socket.create_connection(("127.0.0.1", db.inbound), timeout=TIMEOUT)
        if tls is None:
            return cls(sock, PREAMBLE)
        return cls(tls.wrap_socket(sock), b"")

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_read(self, data: bytes) -> None:
        """Send ``data`` and return once the sidecar has read it (its socket's receive queue
        in /proc/net/tcp is empty), so that what is sent next is another read."""
        self.sock.sendall(data)
        here, there = self.sock.getsockname()[1], self.sock.getpeername()[1]
        wait_for(lambda: unread(there, here) == 0, TIMEOUT, "the sidecar read the bytes")

    def hello(self, label: bytes = b"v1") -> None:
        self.send(self.preamble + first_frame(label))

    def frame(self, data: bytes) -> None:
        self.send(HEADER.pack(len(data)) + data)

    def read_exact(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError(f"closed after {data!r}")
            data += chunk
        return data

    def read_frame(self) -> bytes:
        (length,) = HEADER.unpack(self.read_exact(4))
        return self.read_exact(length)

    def read_payload(self, n: int) -> bytes:
        """``n`` bytes of the app's, from however many frames."""
        while len(self.pending) < n:
            frame = self.read_frame()
            assert frame, f"a FIN after {self.pending!r}"
            self.pending += frame
        data, self.pending = self.pending[:n], self.pending[n:]
        return data

    def read_fin(self) -> None:
        """The app's FIN, after nothing more of its bytes."""
        assert self.pending == b""
        assert self.read_frame() == b""

    def at_eof(self) -> bytes:
        """Whatever comes until the sidecar closes (a reset counts as a close)."""
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
        return data

    def well_behaved(self) -> None:
        """A whole exchange: `ok`, the banner, an echo, a half-close and the app's answer."""
        self.hello()
        assert self.read_frame() == b"ok"
        assert self.read_payload(len(b"hello from db\n")) == b"hello from db\n"
        self.frame(b"ping\n")
        assert self.read_payload(5) == b"ping\n"
        self.send(FIN)
        assert self.read_payload(len(b"bye 5\n")) == b"bye 5\n"
        self.read_fin()
        assert self.at_eof() == b""


def tcp_table() -> Iterator[tuple[int, int, str, str]]:
    """/proc/net/tcp: (local port, remote port, state, inode) per IPv4 socket."""
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        yield (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16),
               fields[3], fields[9])


def unread(local: int, remote: int) -> int | None:
    """Bytes waiting in the receive queue of the loopback socket local -> remote."""
    for row in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = row.split()
        if (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)) == (
                local, remote):
            return int(fields[4].split(":")[1], 16)
    return None


def refused(db: Db, flags: str, before: float) -> None:
    wait_for(lambda: db.closed(flags) > before, TIMEOUT, f"a connection counted {flags}")


@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize(("name", "hello"), [
    ("too long", HEADER.pack(257) + b"x" * 257),
    ("10 KB", HEADER.pack(10_000) + b"v" * 10_000),
    ("zero-length", FIN),
    ("4 GiB", HEADER.pack(0xFFFFFFFF) + b"v1"),
    ("a TLS ClientHello", bytes.fromhex("160301020001")),
    ("HTTP", b"GET / HTTP/1.1\r\nHost: db\r\n\r\n"),
])
def test_a_bad_hello_is_answered_bad_request_and_reaches_no_app(db: Db, name: str,
                                                                hello: bytes) -> None:
    """A first frame over 256 bytes, an empty one, or bytes that are no frame at all after
    the preamble: the answer is `bad_request` and the close; the app is never dialled; the
    connection is counted and logged `bad_request`."""
    before, eofs, seen = db.closed("bad_request"), len(db.app_eofs()), len(db.log_lines())
    with Peer.open(db) as peer:
        peer.send(PREAMBLE + hello)
        assert peer.read_frame() == b"bad_request"
        assert peer.at_eof() == b""
    refused(db, "bad_request", before)
    assert len(db.app_eofs()) == eofs
    line = db.last_line_after(seen)
    assert (line["reason"], line["protocol"], line["upstream"]) == ("bad_request", "TCP", None)
    assert line["client_address"] == "127.0.0.1"  # the peer that sent it


@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize(("name", "sent"), [
    ("nothing after the preamble", PREAMBLE),
    ("half a header", PREAMBLE + HEADER.pack(2)[:2]),
    ("half a hello", PREAMBLE + HEADER.pack(10) + b"v1"),
])
def test_a_caller_that_stalls_before_its_hello_is_closed_after_the_header_timeout(
        db: Db, name: str, sent: bytes) -> None:
    """Slowloris on the hello: after --header-timeout the caller is answered
    `request_timeout` and closed, as a slow HTTP head is; counted and logged."""
    before, seen = db.closed("request_timeout"), len(db.log_lines())
    with Peer.open(db) as peer:
        start = time.monotonic()  # before the sidecar can start its timer
        peer.send(sent)
        assert peer.read_frame() == b"request_timeout"
        assert peer.at_eof() == b""
        assert time.monotonic() - start >= HEADER_TIMEOUT * 0.9  # not before its time
    refused(db, "request_timeout", before)
    assert db.last_line_after(seen)["reason"] == "request_timeout"


def connected(db: Db, peer: Peer, early: bytes = b"", label: bytes = b"v1") -> None:
    """The hello (and ``early``, in the same write), `ok`, then the app's banner."""
    peer.send(peer.preamble + first_frame(label) + early)
    assert peer.read_frame() == b"ok"
    assert peer.read_payload(len(b"hello from db\n")) == b"hello from db\n"


@pytest.mark.usefixtures("baseline")
def test_bytes_sent_before_the_answer_reach_the_app(db: Db) -> None:
    """A caller that does not wait for `ok`: its frames and FIN sent behind the hello are
    kept until the app is connected, then delivered, in order."""
    with Peer.open(db) as peer:
        connected(db, peer, HEADER.pack(6) + b"early\n" + FIN)
        assert peer.read_payload(6) == b"early\n"
        assert peer.read_payload(len(b"bye 6\n")) == b"bye 6\n"
        peer.read_fin()
    wait_for(lambda: 6 in db.app_eofs(), TIMEOUT, "the app saw the bytes and the FIN")


@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("after", [HEADER.pack(4) + b"evil", FIN])
def test_anything_after_the_callers_fin_ends_the_connection(db: Db, after: bytes) -> None:
    """A data frame or a second FIN after the caller's FIN breaks the framing: the connection
    ends `bad_request`; the app saw exactly the bytes before the FIN."""
    before, eofs = db.closed("bad_request"), len(db.app_eofs())
    with Peer.open(db) as peer:
        connected(db, peer)
        peer.send(HEADER.pack(5) + b"ping\n" + FIN + after)  # one write: read at once
        peer.at_eof()
    refused(db, "bad_request", before)
    wait_for(lambda: len(db.app_eofs()) > eofs, TIMEOUT, "the app's connection ended")
    assert db.app_eofs()[-1] == 5


@pytest.mark.usefixtures("baseline")
def test_a_frame_header_split_across_reads_mid_stream_is_waited_for(db: Db) -> None:
    """After the answer, half a frame header then a pause is just a quiet connection: the
    app gets nothing of it, and the frame once complete."""
    with Peer.open(db) as peer:
        connected(db, peer)
        peer.send_read(HEADER.pack(5)[:3])
        peer.send(HEADER.pack(5)[3:] + b"ping\n")
        assert peer.read_payload(5) == b"ping\n"
        peer.send(FIN)
        assert peer.read_payload(len(b"bye 5\n")) == b"bye 5\n"
        peer.read_fin()


@pytest.mark.usefixtures("baseline")
def test_a_4_gib_frame_is_relayed_as_it_trickles_in(db: Db) -> None:
    """A data frame announcing 2^32-1 bytes: nothing is reserved for it, each byte goes on to
    the app as it arrives (the app's echo comes back)."""
    rss = db.rss_kb()
    with Peer.open(db) as peer:
        connected(db, peer)
        peer.send(HEADER.pack(0xFFFFFFFF))
        for piece in (b"a", b"bc", b"def\n"):
            peer.send(piece)
            assert peer.read_payload(len(piece)) == piece
    assert db.rss_kb() - rss < 16_000


def mtls(db: Db, service: str = "web") -> ssl.SSLContext:
    """A client context with a mesh identity, offering ALPN `ami-tcp` as a sidecar does."""
    ctx = client_ctx(mint(db.ca, service), db.ca.trust_bundle())
    ctx.set_alpn_protocols(["ami-tcp"])
    return ctx


@pytest.mark.usefixtures("baseline")
def test_over_mtls_a_hello_that_is_no_version_label_is_unknown(db: Db) -> None:
    """A caller with a mesh identity whose hello is no version label (control characters):
    its connection is served, its version is `unknown` in the metrics, never its bytes."""
    before = metric_value(db.metrics(), "ami_tcp_connections_closed_total",
                          source_workload="web", source_version="unknown",
                          connection_security_policy="mutual_tls", response_flags="-")
    with Peer.open(db, mtls(db)) as peer:
        connected(db, peer, label=b"v1\r\n\x00}")
        peer.frame(b"ping\n")
        assert peer.read_payload(5) == b"ping\n"
    wait_for(lambda: metric_value(db.metrics(), "ami_tcp_connections_closed_total",
                                  source_workload="web", source_version="unknown",
                                  connection_security_policy="mutual_tls",
                                  response_flags="-") > before,
             TIMEOUT, "the connection counted under version unknown")
    assert "\\r" not in db.metrics() and "\\u0000" not in db.sidecar.stdout()


@pytest.mark.usefixtures("baseline")
def test_over_mtls_a_bad_hello_is_bad_request_too(db: Db) -> None:
    """The framing is checked the same for a caller with a mesh identity."""
    before = db.closed("bad_request")
    with Peer.open(db, mtls(db)) as peer:
        peer.send(HEADER.pack(10_000) + b"v" * 10_000)
        assert peer.read_frame() == b"bad_request"
        assert peer.at_eof() == b""
    refused(db, "bad_request", before)


STALL = 3.0  # a send blocked this long: the sidecar stopped reading the caller
FLOOD = 256 << 20


@pytest.mark.usefixtures("baseline")
def test_a_caller_that_stops_reading_is_held_back_not_buffered(db: Db) -> None:
    """The caller sends and never reads; the app echoes everything. End to end backpressure
    (caller <- sidecar <- app, then app <- sidecar <- caller) stops the caller's sends long
    before 256 MiB, and the sidecar's memory does not grow with what was sent."""
    rss = db.rss_kb()
    block = HEADER.pack(1 << 16) + bytes(1 << 16)
    sent = 0
    with Peer.open(db) as peer:
        connected(db, peer)
        peer.sock.settimeout(STALL)
        with pytest.raises(TimeoutError):
            while sent < FLOOD:
                peer.send(block)
                sent += len(block)
        grown = db.rss_kb() - rss
    assert sent < FLOOD // 4, sent
    assert grown < 32_000, (grown, sent)


@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("held", ["served", "stalled in the hello"])
def test_connections_beyond_max_connections_are_refused(db: Db, held: str) -> None:
    """With --max-connections connections open (served, or slowloris callers that sent only
    the preamble), one more is closed at once without a byte, counted in
    `ami_connections_refused_total{listener="inbound"}`; once one ends, a caller gets in.

    Slowloris callers hold their slots for --header-timeout only: a run whose extra caller
    was served, but later than that after the first of them connected, proves nothing (a
    slot may have been freed before the extra came), and is repeated."""
    for _ in range(5):
        if beyond_max_connections(db, held):
            return
        wait_for(lambda: db.open_now() == (0, 0), TIMEOUT, "the run's connections closed")
    raise AssertionError(f"no run within --header-timeout ({HEADER_TIMEOUT} s) in 5")


def beyond_max_connections(db: Db, held: str) -> bool:
    """One run of the test above; False when it did not fit in the header timeout."""
    stalled = held != "served"
    refusals = metric_value(db.metrics(), "ami_connections_refused_total", listener="inbound")
    start = time.monotonic()  # before the first connection: before any of their timers
    peers = [Peer.open(db) for _ in range(MAX_CONNECTIONS)]
    try:
        for peer in peers:
            if stalled:
                peer.send(PREAMBLE)
            else:
                connected(db, peer)
        # (or, stalled, the window over: the extra caller's answer tells what it found)
        wait_for(lambda: db.open_now()[0] == MAX_CONNECTIONS or (
            stalled and time.monotonic() - start >= HEADER_TIMEOUT), TIMEOUT, "all admitted")
        with Peer.open(db) as extra:
            extra.hello()
            try:
                first = extra.sock.recv(1)  # b"": closed without a byte
            except ConnectionResetError:
                first = b""
        # Served (its `ok`) after the window: a stalled caller's slot may have been freed
        # first. Within it, every stalled caller still held its slot.
        if first and stalled and time.monotonic() - start >= HEADER_TIMEOUT:
            return False
        assert first == b"", "a caller beyond --max-connections was served"
        assert metric_value(db.metrics(), "ami_connections_refused_total",
                            listener="inbound") == refusals + 1
        if stalled:  # the header timeout frees them all
            for peer in peers:
                assert peer.read_frame() == b"request_timeout"
        else:
            peers.pop().sock.close()
        wait_for(lambda: db.open_now()[0] < MAX_CONNECTIONS, TIMEOUT, "a connection ended")
        with Peer.open(db) as peer:
            peer.well_behaved()
        return True
    finally:
        for peer in peers:
            peer.sock.close()


@pytest.mark.usefixtures("baseline")
@pytest.mark.parametrize("cut", [1, 4, 11])
def test_a_preamble_split_across_reads_is_still_ami_tcp(db: Db, cut: int) -> None:
    """TCP may deliver the preamble in pieces: the first read holding only its start is not
    refused as HTTP, the rest is awaited and the connection served."""
    with Peer.open(db) as peer:
        peer.send_read(PREAMBLE[:cut])
        peer.preamble = PREAMBLE[cut:]
        peer.well_behaved()


@pytest.mark.usefixtures("baseline")
def test_a_split_preamble_that_goes_wrong_is_a_400(db: Db) -> None:
    """The start of the preamble, then bytes that are not its rest: `400 bad_request`, as
    any other request that is no HTTP."""
    with Peer.open(db) as peer:
        peer.send_read(PREAMBLE[:4])
        peer.send(b"GET / HTTP/1.1\r\n\r\n")
        assert peer.at_eof().startswith(b"HTTP/1.1 400 ")


@pytest.mark.usefixtures("baseline")
def test_part_of_the_preamble_then_nothing_is_closed_after_the_header_timeout(db: Db) -> None:
    """A caller stalling inside the preamble holds its connection no longer than a slow HTTP
    head: after --header-timeout it gets `408 request_timeout` (it is not known yet to be
    anything but HTTP) and the close; the rest of the preamble sent after that opens
    nothing."""
    seen = len(db.log_lines())
    start = time.monotonic()  # before the sidecar can start its timer
    with Peer.open(db) as peer:
        peer.send_read(PREAMBLE[:5])
        head = b""
        while b"\r\n\r\n" not in head:
            head += peer.sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert time.monotonic() - start >= HEADER_TIMEOUT * 0.9
        peer.send(PREAMBLE[5:] + first_frame(b"v1"))
        assert b"ok" not in peer.at_eof()
    assert db.last_line_after(seen)["reason"] == "request_timeout"


def test_an_idle_caller_is_closed_by_the_destination_too(tmp_path: Path) -> None:
    """A plaintext caller without a sidecar has no caller-side idle timer: the destination's
    sidecar ends its connection once idle for the service's own tcpIdleTimeout (1 h by
    default, as Envoy's inbound TCP proxy), counting `idle_timeout`; traffic keeps it open."""
    init_ca(tmp_path / "ca", TD)
    app = start_tcp_app(tmp_path, "db")
    inbound = free_port()
    idle = 2.0  # (a busy connection's bytes come every 0.2 s: a 1.8 s stall to look idle)
    sidecar = start_proxy(tmp_path / "db", mint(CertificateAuthority(tmp_path / "ca"), "db"), {
        "node": {"service": "db", "labels": {"version": "v1"}},
        "app": app.info["address"], "appProtocol": "tcp", "mesh": {"mtls": "PERMISSIVE"},
        "services": {"db": {"endpoints": [], "protocol": "tcp",
                            "policy": {"connectionPool": {"tcpIdleTimeout": f"{idle}s"}}}}},
        inbound=inbound)
    db = Db(sidecar, inbound, app, CertificateAuthority(tmp_path / "ca"))
    try:
        with Peer.open(db) as busy, Peer.open(db) as quiet:
            connected(db, busy)
            connected(db, quiet)
            start = time.monotonic()
            while time.monotonic() - start < 2 * idle:  # bytes every idle/10: never idle
                busy.frame(b"x\n")
                assert busy.read_payload(2) == b"x\n"
                time.sleep(idle / 10)  # the pace of a live connection, not a wait
            assert quiet.at_eof() == b""  # closed (its idle timeout passed long ago)
            busy.frame(b"still\n")
            assert busy.read_payload(6) == b"still\n"
        assert metric_value(db.metrics(), "ami_tcp_connections_closed_total",
                            response_flags="idle_timeout") == 1
    finally:
        sidecar.stop()
        app.stop()


@pytest.mark.usefixtures("baseline")
def test_connection_durations_are_measured_not_counted_in_loop_ticks(db: Db) -> None:
    """A TCP connection's `duration_ms` (access log, tap) comes from time.monotonic(), as a
    request's does: uvloop's loop.time() is whole milliseconds read once per loop iteration,
    so every duration came out a whole number of ms."""
    seen = len(db.log_lines())
    for _ in range(20):
        with Peer.open(db) as peer:
            peer.well_behaved()
    lines = wait_for(lambda: len(db.log_lines()) >= seen + 20 and db.log_lines()[seen:],
                     TIMEOUT, "the connections' access-log lines")
    durations = [float(str(line["duration_ms"])) for line in lines
                 if line["protocol"] == "TCP"]
    assert len(durations) == 20
    assert sum(d != int(d) for d in durations) > 10, sorted(durations)

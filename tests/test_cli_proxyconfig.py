"""meshctl proxy-config's summary of a sidecar's config dump (the dump of a real snapshot)."""

from __future__ import annotations

import dataclasses

from meshctl.commands.proxyconfig import render
from proxy.admin import _jsonable
from proxy.config import Snapshot


def test_summary_names_every_rule_and_what_it_does() -> None:
    snap = Snapshot.from_dict({
        "version": "v7", "node": {"service": "productpage", "labels": {"version": "v1"}},
        "mesh": {"mtls": "STRICT", "outboundTrafficPolicy": {"mode": "ALLOW_ANY"}},
        "services": {"reviews": {"endpoints": [
            {"address": "10.0.0.5:15006", "labels": {"version": "v2"},
             "identity": "spiffe://cluster.local/ns/default/sa/reviews"}]},
            "ratings": {"endpoints": []}},
        "routes": [{"host": "reviews", "rules": [
            {"name": "jason", "matches": [{"headers": {"end-user": {"exact": "jason"}},
                                           "path": {"prefix": "/api"}}, {"method": "DELETE"}],
             "backends": [{"subset": "v2"}], "timeout": "2s", "rewrite": {"uri": "/"},
             "rateLimit": {"requestsPerSecond": 5}},
            {"matches": [{"path": {"exact": "/old"}}], "redirect": {"uri": "/new"}},
            {"backends": [{"subset": "v1", "weight": 90}, {"subset": "v3", "weight": 10}]}]}],
    })
    dump = {"version": "v7", "snapshot": _jsonable(dataclasses.asdict(snap)),
            "listeners": {"outbound": "127.0.0.1:15001"}}
    lines = render(dump).splitlines()
    assert "Node:            default/productpage (version=v1)" in lines
    assert "Mesh:            mTLS STRICT · trust domain cluster.local · outside hosts " \
           "ALLOW_ANY · access log off" in lines
    rules = [line.split("   ") for line in lines if line.startswith("reviews ")][:3]
    assert [[cell.strip() for cell in row if cell.strip()] for row in rules] == [
        ["reviews", "jason", "path prefix /api & header end-user exact jason or method DELETE",
         "reviews/v2 100% (+timeout, rewrite, rateLimit)"],
        ["reviews", "#1", "path exact /old", "redirect 301 uri=/new"],
        ["reviews", "#2", "*", "reviews/v1 90%, reviews/v3 10%"],
    ]
    assert any(line.split() == ["ratings", "-", "*", "ratings", "(all", "endpoints)"]
               for line in lines)
    assert any(line.split() == ["reviews", "10.0.0.5:15006", "v2",
                                "spiffe://cluster.local/ns/default/sa/reviews"]
               for line in lines)
    assert any(line.split() == ["ratings", "(none)", "-", "-"] for line in lines)


def test_a_telemetry_shows_what_it_changes() -> None:
    """A Telemetry's effective settings get a line of their own; none without one."""
    snap = Snapshot.from_dict({
        "version": "v9", "node": {"service": "reviews"}, "mesh": {"accessLog": True},
        "telemetry": {"accessLog": {"disabled": False, "filter": "response.code >= 400"},
                      "tracing": {"sampling": 1.0, "disableSpanReporting": True}}})
    dump = {"version": "v9", "snapshot": _jsonable(dataclasses.asdict(snap)), "listeners": {}}
    assert ("Telemetry:       access log on if response.code >= 400 · sampling 100% · "
            "spans not reported (Telemetry)") in render(dump).splitlines()
    plain = dataclasses.replace(snap, telemetry=None)
    dump["snapshot"] = _jsonable(dataclasses.asdict(plain))
    assert "Telemetry" not in render(dump)


def test_nothing_applied_yet() -> None:
    assert render({"version": None, "snapshot": None, "listeners": {}}) == \
        "no configuration applied yet"


def test_rules_for_other_sources_are_left_out_as_the_proxy_does() -> None:
    """A rule only the gateway applies (sourceLabels) is not in productpage's running config,
    and a block for another namespace is not one of its matches."""
    snap = Snapshot.from_dict({
        "version": "v8", "node": {"service": "productpage", "labels": {"app": "productpage"}},
        "services": {"site": {"endpoints": []}},
        "routes": [{"host": "site", "rules": [
            {"matches": [{"sourceLabels": {"app": "gateway"}}],
             "redirect": {"scheme": "https"}},
            {"matches": [{"sourceNamespace": "batch", "path": {"prefix": "/jobs"}},
                         {"sourceLabels": {"app": "productpage"}, "path": {"prefix": "/pp"}}],
             "cors": {"allowOrigins": [{"exact": "*"}]}, "backends": [{}]},
            {"backends": [{}]}]}],
    })
    dump = {"version": "v8", "snapshot": _jsonable(dataclasses.asdict(snap)), "listeners": {}}
    rows = [[cell.strip() for cell in line.split("   ") if cell.strip()]
            for line in render(dump).splitlines() if line.startswith("site ")]
    assert rows[:2] == [["site", "#1", "path prefix /pp", "site 100% (+cors)"],
                        ["site", "#2", "*", "site 100%"]]


def test_summary_lists_external_services() -> None:
    snap = Snapshot.from_dict({
        "version": "v8", "node": {"service": "productpage"},
        "external": {
            "api.github.com": {"namespace": "default", "name": "github",
                               "ports": [{"number": 443, "protocol": "TLS"},
                                         {"number": 80, "protocol": "HTTP"}]},
            "db.internal": {"namespace": "data", "name": "db", "endpoints": ["10.0.0.7"],
                            "ports": [{"number": 5432, "protocol": "TCP"}]}},
    })
    dump = {"version": "v8", "snapshot": _jsonable(dataclasses.asdict(snap)), "listeners": {}}
    lines = render(dump).splitlines()
    block = lines[lines.index("EXTERNAL SERVICES") + 1:]
    assert block[0].split() == ["HOST", "PORTS", "ENDPOINTS", "EXTERNALSERVICE"]
    assert block[1].split() == ["api.github.com", "443/TLS,80/HTTP", "(DNS:", "the", "host",
                                "name)", "default/github"]
    assert block[2].split() == ["db.internal", "5432/TCP", "10.0.0.7", "data/db"]


def test_summary_shows_modes_peer_authentications_set() -> None:
    """The inbound's own mode and each called service's (or sidecar's), when a
    PeerAuthentication makes them differ from the mesh's (or its service's); no such line
    otherwise."""
    def rendered(data: dict[str, object]) -> list[str]:
        snap = Snapshot.from_dict({"mesh": {"mtls": "STRICT"}, **data})
        return render({"version": "v1", "snapshot": _jsonable(dataclasses.asdict(snap)),
                       "listeners": {}}).splitlines()

    lines = rendered({"inbound": {"mtls": "PERMISSIVE"}, "services": {
        "legacy": {"endpoints": [], "mtls": "DISABLE"}, "reviews": {"endpoints": []},
        "db": {"endpoints": [], "mtls": "PERMISSIVE"}}})
    assert "Inbound mTLS:    PERMISSIVE (PeerAuthentication)" in lines
    assert ("Services' mTLS:  db PERMISSIVE, legacy DISABLE (PeerAuthentication; plaintext to "
            "DISABLE, mTLS to the others)") in lines
    # a sidecar a selector by labels or port makes differ from its service: named with its
    # version and address
    lines = rendered({"services": {"reviews": {"endpoints": [
        {"address": "127.0.0.1:9101", "labels": {"version": "v1"}},
        {"address": "127.0.0.1:9103", "labels": {"version": "v3"}, "mtls": "DISABLE"}]}}})
    assert ("Services' mTLS:  reviews v3 (127.0.0.1:9103) DISABLE (PeerAuthentication; "
            "plaintext to DISABLE, mTLS to the others)") in lines
    plain = rendered({"services": {"reviews": {"endpoints": []}}})
    assert not any(line.startswith(("Inbound mTLS", "Services' mTLS")) for line in plain)


def test_endpoints_show_their_locality_once_one_has_one() -> None:
    """A LOCALITY column (region/zone/subzone, `-` for an endpoint without) when some endpoint
    of the dump has a locality; without any, the table keeps its columns."""
    def endpoint_lines(*localities: str | None) -> list[list[str]]:
        snap = Snapshot.from_dict({"services": {"api": {"endpoints": [
            {"address": f"10.0.0.{i}:15006", "labels": {"version": "v1"},
             **({"locality": loc} if loc else {})} for i, loc in enumerate(localities)]}}})
        dump = {"version": "v1", "snapshot": _jsonable(dataclasses.asdict(snap)),
                "listeners": {}}
        lines = render(dump).splitlines()
        start = lines.index("ENDPOINTS") + 1
        return [line.split() for line in lines[start:start + 1 + len(localities)]]

    assert endpoint_lines("us-east/zone-1/rack-2", None) == [
        ["SERVICE", "ADDRESS", "VERSION", "IDENTITY", "LOCALITY"],
        ["api", "10.0.0.0:15006", "v1", "-", "us-east/zone-1/rack-2"],
        ["api", "10.0.0.1:15006", "v1", "-", "-"]]
    assert endpoint_lines(None)[0] == ["SERVICE", "ADDRESS", "VERSION", "IDENTITY"]


def test_summary_names_the_peers_whose_xfcc_is_kept() -> None:
    """The ids of mesh.trustedXfccIdentities (gateways', MeshConfig's), when there are any;
    a trusted gateway's (mesh.gatewayIdentities) says it wants the gateway certificate."""
    def rendered(mesh: dict[str, object]) -> list[str]:
        snap = Snapshot.from_dict({"mesh": mesh})
        return render({"version": "v1", "snapshot": _jsonable(dataclasses.asdict(snap)),
                       "listeners": {}}).splitlines()

    ids = ["spiffe://cluster.local/ns/edge/sa/ingress", "spiffe://cluster.local/ns/edge/sa/nginx"]
    assert (f"XFCC kept from:  {ids[0]}, {ids[1]} (gateways, MeshConfig trustedXfccIdentities)"
            in rendered({"trustedXfccIdentities": ids}))
    assert not any(line.startswith("XFCC") for line in rendered({}))
    assert (f"XFCC kept from:  {ids[0]} (gateway certificate), {ids[1]} (gateways, MeshConfig "
            "trustedXfccIdentities)" in rendered({"trustedXfccIdentities": ids,
                                                  "gatewayIdentities": ids[:1]}))


def test_summary_lists_the_gateways_tls_passthrough() -> None:
    snap = Snapshot.from_dict({"node": {"service": "gateway"}, "gateway": {
        "rules": [{"destination": "web"}],
        "passthrough": [{"sniHosts": ["db.example.com", "*.db.example.com"],
                         "destination": "db"}]}})
    lines = render({"version": "v1", "snapshot": _jsonable(dataclasses.asdict(snap)),
                    "listeners": {}}).splitlines()
    block = lines[lines.index("GATEWAY TLS PASSTHROUGH") + 1:]
    assert block[0].split() == ["SNI", "HOSTS", "DESTINATION"]
    assert block[1].split() == ["db.example.com,*.db.example.com", "db"]


def test_locality_columns_only_with_locality_balancing() -> None:
    """PRIORITY and SHARE come with the dump's `locality`: a route subset's priorities are
    tagged with the subset, distribute's localities have a share but no priority, and an
    endpoint of no balanced destination gets '-'."""
    snap = Snapshot.from_dict({
        "version": "v9", "node": {"service": "productpage", "locality": "r1/a"},
        "services": {
            "reviews": {"endpoints": [
                {"address": "10.0.0.1:80", "labels": {"version": "v2"}, "locality": "r1/a"},
                {"address": "10.0.0.2:80", "labels": {"version": "v2"}, "locality": "r1/b"},
                {"address": "10.0.0.3:80", "labels": {"version": "v1"}, "locality": "r1/a"}]},
            "details": {"endpoints": [
                {"address": "10.0.1.1:80", "labels": {}, "locality": "r1/a"},
                {"address": "10.0.1.2:80", "labels": {}, "locality": "r1/b"}]}},
    })
    dump = {"version": "v9", "snapshot": _jsonable(dataclasses.asdict(snap)), "listeners": {}}
    plain = _endpoint_rows(render(dump))
    assert len(plain) == 5 and all(len(row) == 5 for row in plain)  # LOCALITY, no more
    dump["locality"] = {
        "reviews/v2": {"mode": "failover", "groups": [
            {"endpoints": ["10.0.0.1:80"], "ejected": ["10.0.0.1:80"], "share": 0.0},
            {"endpoints": ["10.0.0.2:80"], "ejected": [], "share": 100.0}]},
        "details": {"mode": "distribute", "groups": [
            {"endpoints": ["10.0.1.1:80"], "ejected": [], "share": 80.0},
            {"endpoints": ["10.0.1.2:80"], "ejected": [], "share": 20.0}]}}
    text = render(dump)
    assert "PRIORITY" in text.splitlines()[text.splitlines().index("ENDPOINTS") + 1].split()
    rows = {cells[1]: cells[4:] for cells in _endpoint_rows(text)}
    assert rows == {
        "10.0.0.1:80": ["r1/a", "v2:P0 (ejected)", "v2:0%"],
        "10.0.0.2:80": ["r1/b", "v2:P1", "v2:100%"],
        "10.0.0.3:80": ["r1/a", "-", "-"],
        "10.0.1.1:80": ["r1/a", "-", "80%"],
        "10.0.1.2:80": ["r1/b", "-", "20%"]}


def _endpoint_rows(text: str) -> list[list[str]]:
    """The ENDPOINTS table's rows, split into cells (a cell may hold single spaces)."""
    lines = text.splitlines()
    return [[c.strip() for c in line.split("  ") if c.strip()]
            for line in lines[lines.index("ENDPOINTS") + 2:] if line.strip()]


def test_endpoints_status_and_active_from_the_proxys_live_health() -> None:
    """STATUS and ACTIVE once the dump has endpointHealth: an endpoint its service's
    destination ejected, one a subset's own destination ejected (tagged with the subset), in
    panic, and '-' for one no route reaches; ACTIVE sums its pools."""
    snap = Snapshot.from_dict({"services": {"api": {"endpoints": [
        {"address": f"10.0.0.{i}:80", "labels": {"version": f"v{i}"}} for i in (1, 2, 3, 4)]}}})
    def entry(i: int, **live: object) -> dict[str, object]:
        return {"address": f"10.0.0.{i}:80", "status": "HEALTHY", "activeRequests": 1,
                "connections": 2, **live}
    health = {"api": {"endpoints": [
        entry(1), entry(2, status="EJECTED", ejectedSeconds=65.2, panic=False),
        entry(3, status="EJECTED", ejectedSeconds=3, panic=True)]},
        "api/v1": {"endpoints": [entry(1, status="EJECTED", ejectedSeconds=7200)]}}
    dump = {"version": "v1", "snapshot": _jsonable(dataclasses.asdict(snap)), "listeners": {},
            "endpointHealth": health}
    rows = {row[1]: row[4:] for row in _endpoint_rows(render(dump))}
    assert rows == {
        "10.0.0.1:80": ["HEALTHY, v1:EJECTED (2h00m left)", "2 req/4 conn"],
        "10.0.0.2:80": ["EJECTED (1m05s left)", "1 req/2 conn"],
        "10.0.0.3:80": ["EJECTED (3s left) (panic)", "1 req/2 conn"],
        "10.0.0.4:80": ["-", "-"]}

"""AuthorizationPolicy on TCP connections: Istio's rules for fields only a request has."""

from __future__ import annotations

import pytest

from meshctl.api.authz import parse_authorization
from meshctl.api.errors import ValidationError

WEB = ("spiffe://cluster.local/ns/default/sa/web", "web", "default")


def rule(spec: dict[str, object]):  # type: ignore[no-untyped-def]
    return parse_authorization({"rules": [spec]}, "spec").rules[0]


@pytest.mark.parametrize(("spec", "allow", "deny"), [
    ({"from": [{"services": ["web"]}]}, True, True),
    ({"from": [{"services": ["other"]}]}, False, False),
    ({"from": [{"namespaces": ["default"]}], "to": [{"ports": [5432]}]}, True, True),
    ({"to": [{"ports": [6379]}]}, False, False),
    # HTTP-only fields: an ALLOW rule naming one matches no connection; a DENY rule is
    # checked without them (so it refuses more: Istio's TCP semantics)
    ({"from": [{"services": ["web"]}], "to": [{"methods": ["GET"]}]}, False, True),
    ({"to": [{"paths": ["/admin/*"]}]}, False, True),
    ({"from": [{"services": ["web"], "requestPrincipals": ["*"]}]}, False, True),
    ({"when": [{"header": "x-user", "values": ["alice"]}]}, False, True),
    ({"from": [{"services": ["other"]}], "to": [{"methods": ["GET"]}]}, False, False),
    ({"to": [{"paths": ["/x"], "ports": [6379]}]}, False, False),
])
def test_a_connection_matches_rules_as_istio_decides_for_tcp(
        spec: dict[str, object], allow: bool, deny: bool) -> None:
    """A connection from web to port 5432, against one rule, in an ALLOW and a DENY policy."""
    r = rule(spec)
    assert r.matches_connection(*WEB, 5432) is allow
    assert r.matches_connection(*WEB, 5432, deny=True) is deny


def test_ports_apply_to_requests_too_and_are_checked() -> None:
    """`to: [{ports: [...]}]` is the destination app's port for a request as well; a port
    that is no port is refused with its field path."""
    r = rule({"to": [{"ports": [9080]}]})
    assert r.matches(*WEB, "GET", "/", lambda _n: [], port=9080)
    assert not r.matches(*WEB, "GET", "/", lambda _n: [], port=9081)
    with pytest.raises(ValidationError, match=r"rules\[0\]\.to\[0\]\.ports\[0\]"):
        rule({"to": [{"ports": [70000]}]})

"""Istio Gateway -> Ami Gateway: the hosts its HTTP servers serve, and their HTTPS redirects."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from meshctl.api import fields as F
from meshctl.api.fields import Fields
from meshctl.api.istio.common import (
    Translation,
    ami_doc,
    done,
    items,
    metadata,
    namespace_of,
    nested,
    refuse,
)

# Server protocols whose requests a gateway proxy routes (GRPC: HTTP/2 requests)
HTTP_PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC")
# TLS settings a server may have: its certificate is the gateway's --gateway-cert
TLS_ACCEPTED = ("mode", "credentialName", "credentialNames", "httpsRedirect")


def translate(doc: Mapping[str, Any], origin: str) -> list[Translation]:
    """One Ami Gateway of the same name: `hosts` (every server's, the VirtualServices bound
    to it route within them) and, for a server with `tls.httpsRedirect`, a rule redirecting
    its plain HTTP requests to https."""
    meta = metadata(doc)
    namespace = namespace_of(meta)
    f = Fields(doc.get("spec"), "spec")
    f.raw("selector")  # any: an Ami gateway proxy serves every Gateway of its namespace
    if not f.has("servers"):
        f.add(f.at("servers"), "field is required")
    hosts: list[str] = []
    rules: list[dict[str, Any]] = []
    paths: list[tuple[str, str]] = []
    for path, item in items(f, "servers"):
        if not isinstance(item, Mapping):
            f.add(path, f"expected a mapping, got {F.describe(item)}")
            continue
        s = Fields(item, path)
        server_hosts = _hosts(s, namespace, hosts, paths)
        redirect = _tls(s, _protocol(s))
        if redirect:
            paths.append((f"spec.rules[{len(rules)}]", s.at("tls") + ".httpsRedirect"))
            rules.append({"hosts": server_hosts, "match": [{"scheme": {"exact": "http"}}],
                          "redirect": {"scheme": "https"}})
        s.raw("name")
        refuse(s, "bind", "bind; the gateway proxy listens on its --gateway-listen")
        refuse(s, "defaultEndpoint", "defaultEndpoint; the gateway sends requests to the "
                                     "services its rules name")
        done(f, s)
    f.finish()
    spec: dict[str, Any] = {"hosts": list(dict.fromkeys(hosts))}
    if rules:
        spec["rules"] = rules
    t = Translation(ami_doc("Gateway", meta, spec, origin), origin)
    for ami, istio in paths:
        t.at(ami, istio)
    return [t]


def _protocol(s: Fields) -> str:
    port = nested(s, "port")
    if port is None:
        if not s.has("port"):
            s.add(s.at("port"), "field is required")
        return ""
    port.required("number", F.integer(1, 65535), 0)  # (the gateway's --gateway-listen binds)
    port.raw("name")
    port.raw("targetPort")
    protocol = port.required("protocol", F.string(), "")
    if protocol and protocol.upper() not in HTTP_PROTOCOLS:
        port.add(port.at("protocol"), f"not supported by Ami: a {protocol} server; an Ami "
                 "gateway routes HTTP (HTTP, HTTPS, HTTP2, GRPC): pass TLS through by server "
                 "name with an Ami Gateway's passthrough entries")
    done(s, port)
    return protocol.upper()


def _hosts(s: Fields, namespace: str, hosts: list[str],
           paths: list[tuple[str, str]]) -> list[str]:
    """The server's hosts, `ns/` dropped: an Ami gateway binds the VirtualServices of its own
    namespace, so `./`, `*/` and its namespace's name mean the host alone."""
    out = []
    for j, host in enumerate(s.required("hosts", F.list_of(F.string(), 1), ())):
        where = f"{s.at('hosts')}[{j}]"
        scope, slash, name = host.rpartition("/")
        if slash and scope not in (".", "*", namespace):
            s.add(where, f"not supported by Ami: {host!r} admits VirtualServices of namespace "
                         f"{scope}; an Ami gateway binds those of its own namespace "
                         f"({namespace}): write {name!r}, and the VirtualServices here")
            continue
        paths.append((f"spec.hosts[{len(hosts)}]", where))
        hosts.append(name.lower())
        out.append(name.lower())
    return out


def _tls(s: Fields, protocol: str) -> bool:
    """Check a server's tls; whether it redirects plain HTTP to https."""
    tls = nested(s, "tls")
    if tls is None:
        if protocol == "HTTPS":
            s.add(s.at("tls"), "field is required for an HTTPS server (mode: SIMPLE)")
        return False
    redirect = tls.value("httpsRedirect", F.boolean, False)
    mode = tls.raw("mode")
    if protocol == "HTTPS" and mode not in (None, "SIMPLE"):
        tls.add(tls.at("mode"), f"not supported by Ami: mode {mode}; the HTTPS gateway "
                "terminates TLS with its --gateway-cert (SIMPLE); client certificates "
                "(MUTUAL) and passthrough are not Istio Gateway servers here")
    if protocol != "HTTPS" and mode is not None:
        tls.add(tls.at("mode"), "only an HTTPS server has a TLS mode")
    # credentialName(s): accepted, the certificate is the gateway's --gateway-cert
    tls.raw("credentialName")
    tls.raw("credentialNames")
    for key in ("serverCertificate", "privateKey", "caCertificates", "subjectAltNames",
                "minProtocolVersion", "maxProtocolVersion", "cipherSuites",
                "verifyCertificateSpki", "verifyCertificateHash", "caCrl"):
        refuse(tls, key, f"{key}; the gateway's certificate and TLS settings are its "
                         "command line's (--gateway-cert)")
    done(s, tls)
    return redirect and protocol != "HTTPS"

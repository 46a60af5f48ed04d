"""SPIFFE ids: building `spiffe://<td>/ns/<ns>/sa/<service>` and checking their syntax."""

from __future__ import annotations

import re

from cryptography import x509

from meshctl.ca.errors import CAError, CsrRejected
from proxy.adminauth import CONTROL_PLANE_NAMESPACE, CONTROL_PLANE_SERVICE

SCHEME = "spiffe://"
# SPIFFE spec: trust domain chars, and path segments of letters, digits, '.', '-', '_'.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]{1,255}")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# namespace and service names are DNS labels, like Kubernetes names.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def check_trust_domain(trust_domain: str) -> str:
    """Return `trust_domain` if it is a valid SPIFFE trust domain, else raise ValueError."""
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise ValueError(
            f"invalid trust domain {trust_domain!r}: use lowercase letters, digits, '.', '-', '_'"
        )
    return trust_domain


def check_name(kind: str, name: str) -> str:
    """Return a namespace/service name if it is a DNS label, else raise ValueError."""
    if not _LABEL.fullmatch(name):
        raise ValueError(f"invalid {kind} {name!r}: must be a DNS label (a-z, 0-9, '-')")
    return name


def reserved_namespace(namespace: str) -> str | None:
    """Why no workload may hold an identity (or a bootstrap token) in ``namespace``, None if
    it may. The control plane's namespace is reserved: a sidecar's privileged admin routes
    answer its identity, spiffe://<td>/ns/ami-system/sa/meshctl (proxy/adminauth.py), alone."""
    if namespace != CONTROL_PLANE_NAMESPACE:
        return None
    return (f"namespace {namespace!r} is reserved for the control plane (its identity "
            f"spiffe://<trust domain>/ns/{namespace}/sa/{CONTROL_PLANE_SERVICE}): no proxy "
            "is issued a token or a certificate in it")


def check_workload_namespace(namespace: str) -> str:
    """Return ``namespace`` if a workload may be in it, else raise ValueError saying why."""
    reason = reserved_namespace(namespace)
    if reason is not None:
        raise ValueError(reason)
    return namespace


def spiffe_id_for(trust_domain: str, namespace: str, service: str) -> str:
    """The SPIFFE id of a workload: spiffe://<td>/ns/<namespace>/sa/<service>."""
    check_trust_domain(trust_domain)
    check_name("namespace", namespace)
    check_name("service", service)
    return f"{SCHEME}{trust_domain}/ns/{namespace}/sa/{service}"


def trust_domain_of(spiffe_id: str) -> str:
    """The trust domain of a workload SPIFFE id, raising CsrRejected if the id is malformed."""
    if not spiffe_id.startswith(SCHEME):
        raise CsrRejected(f"{spiffe_id!r} is not a spiffe:// URI")
    trust_domain, sep, path = spiffe_id[len(SCHEME) :].partition("/")
    if not _TRUST_DOMAIN.fullmatch(trust_domain):
        raise CsrRejected(f"{spiffe_id!r}: invalid trust domain")
    segments = path.split("/") if sep else []
    if not segments or any(s in (".", "..") or not _SEGMENT.fullmatch(s) for s in segments):
        raise CsrRejected(f"{spiffe_id!r}: a workload id needs a path of non-empty segments")
    return trust_domain


def uri_sans(cert: x509.Certificate) -> list[str]:
    """The URI subject alternative names of a certificate (empty list when it has none)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def trust_domain_of_ca(cert: x509.Certificate, source: str) -> str:
    """The trust domain an Ami intermediate serves, read from its `spiffe://<td>` URI SAN."""
    for uri in uri_sans(cert):
        if uri.startswith(SCHEME) and "/" not in uri[len(SCHEME) :]:
            return check_trust_domain(uri[len(SCHEME) :])
    raise CAError(f"{source}: no spiffe://<trust-domain> URI SAN; is this an Ami intermediate?")

"""The resource kinds' names: singular, plural, any case. Nothing imported: the CLI's client
and its command line read these without loading the resource model."""

from __future__ import annotations

KIND_PLURALS: dict[str, str] = {
    "Route": "routes",
    "DestinationPolicy": "destinationpolicies",
    "AuthorizationPolicy": "authorizationpolicies",
    "RequestAuthentication": "requestauthentications",
    "PeerAuthentication": "peerauthentications",
    "MeshConfig": "meshconfigs",
    "Gateway": "gateways",
    "ExternalService": "externalservices",
    "Telemetry": "telemetries",
    "Sidecar": "sidecars",
    "Canary": "canaries",
    "HTTPRoute": "httproutes",  # Gateway API (gateway.networking.k8s.io), GAMMA
    "GRPCRoute": "grpcroutes",
}
_KIND_BY_WORD = {w.lower(): k for k, p in KIND_PLURALS.items() for w in (k, p)}
# Istio kinds of another name, stored as the Ami kind they are translated into
ISTIO_STORED_AS: dict[str, tuple[str, str]] = {
    word: (istio, ami)
    for istio, plural, ami, short in (
        ("VirtualService", "virtualservices", "Route", "vs"),
        ("DestinationRule", "destinationrules", "DestinationPolicy", "dr"),
        ("ServiceEntry", "serviceentries", "ExternalService", "se"))
    for word in (istio.lower(), plural, short)}


def kind_for(word: str) -> str | None:
    """The canonical kind for ``route``, ``routes``, ``Route`` ...; None if unknown."""
    return _KIND_BY_WORD.get(word.lower())

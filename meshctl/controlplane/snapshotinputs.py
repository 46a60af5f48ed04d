"""What of a proxy its snapshot depends on: the key under which proxies share one snapshot."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshctl.controlplane.registry import ProxyInfo


@dataclass(frozen=True, slots=True)
class SnapshotInputs:
    """The ProxyInfo fields SnapshotBuilder reads, and nothing else: it builds from this, not
    from the ProxyInfo, so a field it does not hold cannot reach a snapshot (mypy says so),
    and proxies with equal inputs (the replicas of a workload) get the same bytes. The name,
    addresses, readiness, certificate, app health and protocol, versions and tokens of a
    proxy are not here: they reach snapshots only through the registry's endpoint lists,
    which are the same for every proxy of a pass."""

    service: str
    namespace: str
    label_items: tuple[tuple[str, str], ...]  # the labels, sorted: hashable
    mode: str
    locality: str
    app_port: int
    labels: Mapping[str, str] = field(compare=False, repr=False)  # label_items, as a mapping

    @classmethod
    def of(cls, proxy: ProxyInfo) -> SnapshotInputs:
        return cls(proxy.service, proxy.namespace, tuple(sorted(proxy.labels.items())),
                   proxy.mode, proxy.locality, proxy.app_port, proxy.labels)

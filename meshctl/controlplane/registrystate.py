"""The registry's state file: saved on change, restored at start, so a restart loses no endpoint.

The registry lives in memory and is rebuilt as sidecars reconnect, which takes up to their
reconnect backoff (5 s). Without the file, a restarted control plane would send the first
sidecars to reconnect snapshots without the endpoints of the others. With it, every proxy known
before the restart is listed (disconnected) for ``--warmup`` seconds; see Registry.restore.

The file is ``<state-dir>/registry.json`` (mode 0600), written atomically at most every
``interval`` seconds while the registry changes, and once more on a clean stop. A missing,
unreadable or malformed file is logged and ignored: the registry then starts empty. An entry
that a live Register would refuse (``xds.check_proxy``, e.g. an inbound without a port) is
logged and dropped, the others are restored. Keys this version does not know (a newer control
plane's, found after a rollback) are ignored and logged once, so that a rollback keeps the
registry: a newer version adds keys within format 1 and bumps the format only for a change
that an older one must not read.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from meshctl.controlplane.dirfiles import atomic_write
from meshctl.controlplane.registry import ProxyInfo, Registry
from meshctl.controlplane.xds import RegistrationError, check_proxy

log = logging.getLogger(__name__)
FILE_NAME = "registry.json"
_FORMAT = 1
_FIELDS = {f.name for f in fields(ProxyInfo)}
_TOP_LEVEL = {"format", "proxies"}
# (a file written before trusted_gateway or gateway_cert: False)
_BOOLS = {"ready", "trusted_gateway", "gateway_cert"}


def encode(proxies: list[ProxyInfo]) -> bytes:
    return json.dumps({"format": _FORMAT, "proxies": [asdict(p) for p in proxies]},
                      separators=(",", ":")).encode()


def decode(data: bytes) -> list[ProxyInfo]:
    """The proxies in a state file; ValueError if it is not one this version wrote."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"not a registry state file of format {_FORMAT}")
    raw = doc.get("proxies")
    if not isinstance(raw, list):
        raise ValueError("'proxies' must be a list")
    unknown = {f"{key} (top level)" for key in doc.keys() - _TOP_LEVEL}
    proxies = []
    for index, item in enumerate(raw):
        info = _proxy(index, item, unknown)
        try:
            proxies.append(check_proxy(info))
        except RegistrationError as exc:
            # As a live Register would be: a poisoned entry (say an inbound without a port)
            # listed for the warmup made every sidecar NACK every snapshot until it expired.
            log.warning("dropping proxies[%d] (%s) of the registry state file: %s",
                        index, info.name, exc)
    if unknown:
        # Once per load, not per entry: every entry of a newer control plane has the key.
        log.warning("the registry state file has keys this version does not know, ignored "
                    "(written by a newer control plane?): %s", ", ".join(sorted(unknown)))
    return proxies


def _proxy(index: int, item: Any, unknown: set[str]) -> ProxyInfo:
    """Entry ``index`` as a ProxyInfo; the keys it does not know go into ``unknown``."""
    if not isinstance(item, dict) or not {"name", "service"} <= item.keys():
        raise ValueError(f"proxies[{index}]: not a proxy entry")
    if not item.keys() <= _FIELDS:  # a newer control plane's field: what it adds, not needed
        unknown.update(item.keys() - _FIELDS)
        item = {key: value for key, value in item.items() if key in _FIELDS}
    for key, value in item.items():
        expected = (bool if key in _BOOLS else dict if key == "labels"
                    else int if key == "app_port" else str)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ValueError(f"proxies[{index}].{key}: must be a {expected.__name__}")
    labels = item.get("labels", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ValueError(f"proxies[{index}].labels: must map strings to strings")
    return ProxyInfo(**item)


class RegistryStateFile:
    """Keeps ``path`` in step with ``registry``."""

    def __init__(self, path: Path, registry: Registry, *, interval: float = 0.5) -> None:
        self.path = path
        self.registry = registry
        self.interval = interval
        self._saved_revision = -1

    def restore(self, hold: float) -> int:
        """Load the file into the registry (listed for ``hold`` s); how many proxies it held."""
        try:
            proxies = decode(self.path.read_bytes())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
            log.warning("ignoring the registry state file %s: %s", self.path, exc)
            return 0
        self.registry.restore(proxies, hold)
        self._saved_revision = self.registry.revision
        log.info("restored %d proxies from %s; each is dropped unless it reconnects within "
                 "%.0fs", len(proxies), self.path, hold)
        return len(proxies)

    def save(self) -> None:
        """Write the registry now if it changed since the last save (a failure is logged)."""
        pending = self._unsaved()
        if pending is not None:
            self._write(*pending)

    async def run(self) -> None:
        """Save after changes, at most every ``interval`` s, until cancelled (then once more)."""
        try:
            while True:
                await self.registry.changed.wait()
                self.registry.changed.clear()
                await asyncio.sleep(self.interval)  # coalesce a burst of (re)registrations
                pending = self._unsaved()
                if pending is not None:
                    await asyncio.to_thread(self._write, *pending)  # fsync: off the loop
        finally:
            self.save()

    def _unsaved(self) -> tuple[int, bytes] | None:
        """(revision, file bytes) when the registry changed since the last save, else None."""
        revision = self.registry.revision
        if revision == self._saved_revision:
            return None
        return revision, encode(self.registry.proxies())

    def _write(self, revision: int, data: bytes) -> None:
        try:
            atomic_write(self.path, data, mode=0o600)
        except OSError as exc:
            log.warning("cannot save the registry state to %s: %s", self.path, exc)
            return
        self._saved_revision = revision

"""The Canary controller's statuses on disk (``<state-dir>/canaries.json``), so that a restarted
control plane resumes each run: the store keeps status in memory only."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from meshctl.controlplane.dirfiles import atomic_write
from meshctl.controlplane.store import Key

log = logging.getLogger("ami.canary")
FILE_NAME = "canaries.json"


class CanaryStateFile:
    """Every Canary's last status, by ``kind/namespace/name``; written on each change."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._statuses: dict[str, dict[str, Any]] = {}

    def load(self) -> dict[Key, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            self._statuses = {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError) as exc:
            log.warning("ignoring unreadable %s: %s", self.path, exc)
            return {}
        out: dict[Key, dict[str, Any]] = {}
        for text, status in self._statuses.items():
            parts = text.split("/")
            if len(parts) == 3:
                out[(parts[0], parts[1], parts[2])] = status
        return out

    def save(self, key: Key, status: Mapping[str, Any]) -> None:
        self._statuses["/".join(key)] = dict(status)
        self._write()

    def keep(self, keys: set[Key]) -> None:
        """Forget the Canaries not in ``keys`` (deleted)."""
        wanted = {"/".join(k) for k in keys}
        if set(self._statuses) - wanted:
            self._statuses = {k: v for k, v in self._statuses.items() if k in wanted}
            self._write()

    def _write(self) -> None:
        try:
            atomic_write(self.path, json.dumps(self._statuses, sort_keys=True).encode(),
                         mode=0o600)
        except OSError as exc:
            log.warning("cannot save the canaries' statuses to %s: %s", self.path, exc)
            raise

"""Static mode: read a snapshot from a YAML file (no control plane)."""

from __future__ import annotations

from pathlib import Path

import yaml

from proxy.config import ConfigError, Snapshot, check_known_keys


def load_static(path: Path) -> Snapshot:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    try:
        check_known_keys(data)  # first: `hosts:` is a typo, better said than `host: required`
        return Snapshot.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None

"""Static proxy snapshots (docs/design.md, "The proxy snapshot") for the Ami bench paths."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import yaml

BENCH_SERVICE = "backend"


def proxy_available() -> str | None:
    """None when `python -m proxy` can run, else the reason the ami paths are skipped."""
    if importlib.util.find_spec("proxy.__main__") is None:
        return "proxy not available (no proxy/__main__.py)"
    return None


def one_hop_snapshot(outbound_port: int, admin_port: int, backend_port: int) -> dict[str, Any]:
    """Outbound listener routing Host `backend` straight to the backend, admin/metrics on."""
    return {
        "version": "bench-1",
        "node": {"service": "bench-client", "namespace": "default", "labels": {}},
        "listeners": {
            "outbound": f"127.0.0.1:{outbound_port}",
            "admin": f"127.0.0.1:{admin_port}",
        },
        "mesh": {"mtls": "DISABLE", "accessLog": False},
        "services": {
            BENCH_SERVICE: {
                "namespace": "default",
                "endpoints": [{"address": f"127.0.0.1:{backend_port}"}],
            }
        },
    }


def write_snapshot(path: Path, snapshot: dict[str, Any]) -> Path:
    """Write a snapshot as YAML and return its path."""
    path.write_text(yaml.safe_dump(snapshot, sort_keys=False))
    return path


def proxy_argv(config: Path) -> tuple[str, ...]:
    """`python -m proxy --config FILE` with this interpreter (the venv's)."""
    return (sys.executable, "-m", "proxy", "--config", str(config))

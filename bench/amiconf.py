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


def one_hop_snapshot(outbound_port: int, admin_port: int, backend_port: int,
                     access_log: bool = False) -> dict[str, Any]:
    """Outbound listener routing Host `backend` straight to the backend, admin/metrics on."""
    return {
        "version": "bench-1",
        "node": {"service": "bench-client", "namespace": "default", "labels": {}},
        "listeners": {
            "outbound": f"127.0.0.1:{outbound_port}",
            "admin": f"127.0.0.1:{admin_port}",
        },
        "mesh": {"mtls": "DISABLE", "accessLog": access_log},
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


def mesh_identities(run_dir: Path) -> dict[str, Path]:
    """A mesh CA (meshctl.ca) and one identity dir per proxy, as `--identity-dir` expects."""
    from meshctl.ca import CertificateAuthority, init_ca, spiffe_id_for
    from proxy.identity import generate_key_and_csr

    ca_dir = run_dir / "mesh-ca"
    if not (ca_dir / "ca-cert.pem").exists():
        init_ca(ca_dir, force=True)
    ca = CertificateAuthority(ca_dir)
    dirs: dict[str, Path] = {}
    for name in ("bench-client", BENCH_SERVICE):
        spiffe = spiffe_id_for("cluster.local", "default", name)
        key_pem, csr_pem = generate_key_and_csr(spiffe)
        issued = ca.sign_csr(csr_pem, spiffe, 24 * 3600)
        out = run_dir / f"identity-{name}"
        out.mkdir(exist_ok=True)
        (out / "key.pem").write_bytes(key_pem)
        (out / "cert.pem").write_bytes(issued.cert_pem)
        (out / "chain.pem").write_bytes(issued.chain_pem)
        (out / "bundle.pem").write_bytes(ca.trust_bundle())
        dirs[name] = out
    return dirs


# A route as a real deployment has one: a match, a timeout and a retry policy, all evaluated.
FEATURE_RULES = [{
    "matches": [{"path": {"prefix": "/"}}],
    "backends": [{"weight": 100}],
    "timeout": "5s",
    "retries": {"attempts": 2, "retryOn": ["connect-failure", "reset"]},
}]
# The same rule, named: its requests are counted per rule too (ami_route_*, bench.micro's
# `named` variant measures what that costs).
NAMED_RULES = [{"name": "default", **FEATURE_RULES[0]}]


def two_hop_snapshots(out_port: int, out_admin: int, in_port: int, in_admin: int,
                      backend_port: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(outbound, inbound) snapshots: client sidecar -> mTLS -> server sidecar -> backend."""
    mesh = {"mtls": "STRICT", "accessLog": False}
    identity = f"spiffe://cluster.local/ns/default/sa/{BENCH_SERVICE}"
    outbound = {
        "version": "bench-2hop",
        "node": {"service": "bench-client", "namespace": "default", "labels": {"version": "v1"}},
        "listeners": {"outbound": f"127.0.0.1:{out_port}", "admin": f"127.0.0.1:{out_admin}"},
        "mesh": mesh,
        "services": {BENCH_SERVICE: {"endpoints": [{
            "address": f"127.0.0.1:{in_port}", "labels": {"version": "v1"},
            "identity": identity}]}},
        "routes": [{"host": BENCH_SERVICE, "rules": FEATURE_RULES}],
    }
    inbound = {
        "version": "bench-2hop",
        "node": {"service": BENCH_SERVICE, "namespace": "default", "labels": {"version": "v1"}},
        "listeners": {"inbound": f"127.0.0.1:{in_port}", "admin": f"127.0.0.1:{in_admin}"},
        "app": f"127.0.0.1:{backend_port}",
        "mesh": mesh,
    }
    return outbound, inbound


def proxy_argv_identity(config: Path, identity_dir: Path) -> tuple[str, ...]:
    return (*proxy_argv(config), "--identity-dir", str(identity_dir))

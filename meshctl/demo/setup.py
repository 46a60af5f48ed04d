"""Demo set-up before any process starts: the CA, bootstrap tokens and the seeded config dir.

Shared by `meshctl demo up` and compose's one-shot `setup` service
(`python -m meshctl.demo.setup ...`), so both start from the same files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from meshctl.api import istio
from meshctl.ca import BootstrapTokens, CaFiles, init_ca
from meshctl.demo.topology import GATEWAY, services

ROUTES_DIR = Path(__file__).resolve().parents[2] / "sample_apps" / "bookinfo" / "routes"
DEFAULT_ROUTES = ROUTES_DIR / "default"
# The same start written in Istio's YAML (`demo up --istio`), Istio's task files beside it
ISTIO_DIR = ROUTES_DIR.parent / "istio"
ISTIO_ROUTES = ISTIO_DIR / "default"


def ensure_ca(certs: Path) -> bool:
    """Create the mesh CA in `certs` unless one is there; True if it was created."""
    if CaFiles(certs).ca_cert.exists():
        return False
    init_ca(certs)
    return True


def write_tokens(certs: Path, tokens: Path) -> None:
    """One bootstrap-token file (0600) per service, derived from the CA's bootstrap secret,
    and a copy of the trust bundle: what a proxy needs, without the CA's keys. The gateway's
    file holds its gateway token (sidecars keep the XFCC of a gateway registered with one)."""
    issuer = BootstrapTokens.load(certs)
    tokens.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(certs / "trust-bundle.pem", tokens / "trust-bundle.pem")
    for service in services():
        path = tokens / service
        make = issuer.gateway_token_for if service == GATEWAY else issuer.token_for
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(make("default", service) + "\n")


def seed_config(config: Path, *, gateway_listen: str, routes: Path = DEFAULT_ROUTES,
                otlp_endpoint: str | None = None, fresh: bool = True) -> bool:
    """Write the default resources into the control plane's config dir; True if written.

    `fresh` replaces whatever is there (the local demo always starts from the default set);
    otherwise an existing, non-empty dir is kept (compose keeps changes across restarts).
    The Gateway's `listen` follows the port actually bound; tracing gets the OTLP collector.
    Istio documents are written as the Ami objects they translate to (annotated with their
    origin): the control plane does not rewrite Istio YAML in its directory, and these objects
    must take the user's later `apply -f` of the same Istio documents as edits.
    """
    if config.exists() and not fresh and any(config.iterdir()):
        return False
    if config.exists():
        shutil.rmtree(config)
    config.mkdir(parents=True)
    for source in sorted(routes.glob("*.yaml")):
        docs = [_patch(d, gateway_listen, otlp_endpoint)
                for doc in yaml.safe_load_all(source.read_text()) if doc
                for d in _as_ami(doc)]
        (config / source.name).write_text(
            f"# seeded from {source.name} by meshctl demo\n"
            + yaml.safe_dump_all(docs, sort_keys=False))
    return True


def mtls_mode(routes: Path = DEFAULT_ROUTES) -> str:
    """The mTLS mode the resource set declares (MeshConfig's default is STRICT)."""
    for source in sorted(routes.glob("*.yaml")):
        for doc in yaml.safe_load_all(source.read_text()):
            if doc and doc.get("kind") == "MeshConfig":
                return str((doc.get("spec") or {}).get("mtls", {}).get("mode", "STRICT"))
    return "STRICT"


def _as_ami(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """``doc``, or the Ami documents an Istio document translates to."""
    return [t.doc for t in istio.translate(doc)] if istio.is_istio(doc) else [doc]


def _patch(doc: dict[str, Any], gateway_listen: str, otlp: str | None) -> dict[str, Any]:
    if doc.get("kind") == "Gateway" and "listen" in doc.get("spec", {}):
        doc["spec"]["listen"] = gateway_listen  # (Istio's Gateways, translated, have none)
    if doc.get("kind") == "MeshConfig" and otlp:
        doc.setdefault("spec", {}).setdefault("tracing", {})["otlpEndpoint"] = otlp
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    """Compose's set-up step: CA if missing, tokens, config dir if empty."""
    p = argparse.ArgumentParser(prog="python -m meshctl.demo.setup", description=__doc__)
    p.add_argument("--certs", type=Path, required=True)
    p.add_argument("--tokens", type=Path, required=True)
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--gateway-listen", default="0.0.0.0:8080")
    p.add_argument("--otlp-endpoint")
    p.add_argument("--routes", type=Path, default=DEFAULT_ROUTES)
    p.add_argument("--dry-run", action="store_true", help="check the arguments and exit")
    args = p.parse_args(argv)
    if args.dry_run:
        print("ok")
        return 0
    if ensure_ca(args.certs):
        print(f"created the mesh CA in {args.certs}")
    write_tokens(args.certs, args.tokens)
    if seed_config(args.config, gateway_listen=args.gateway_listen, routes=args.routes,
                   otlp_endpoint=args.otlp_endpoint, fresh=False):
        print(f"seeded {args.config} from {args.routes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`meshctl certs issue`: a workload certificate from the local CA files, for a static proxy.

A proxy with a control plane gets its certificates from the CA service, which adds the
gateway marker only for a gateway registered with its gateway token. A static proxy
(`--config`, `--identity-dir`) has no control plane to ask: whoever holds the CA directory
(the intermediate's key) issues its identity here, and `--gateway` marks it as a trusted
gateway's, which sidecars listing the id in `mesh.gatewayIdentities` want before they keep its
x-forwarded-client-cert. Holding the CA key is already the power to issue any identity; this
only writes what `--identity-dir` reads.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from meshctl.api.durations import parse_duration
from meshctl.ca import MIN_TTL, CAError, CertificateAuthority, spiffe_id_for
from meshctl.ca.builders import utc
from meshctl.ca.files import PRIVATE, PUBLIC, write_atomic
from meshctl.ca.spiffe import check_workload_namespace
from proxy.identity import generate_key_and_csr

DEFAULT_TTL = "24h"


def add_issue_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
                     default_dir: Path) -> None:
    """Register `certs issue`."""
    issue = sub.add_parser(
        "issue", help="issue a workload certificate into DIR for a static proxy",
        description="Sign a new key for SERVICE's SPIFFE id with the CA in --dir and write "
                    "key.pem (mode 0600), cert.pem, chain.pem and bundle.pem into --out, the "
                    "files `python -m proxy --identity-dir` reads. There is no renewal in "
                    "static mode: issue again (into the same DIR) before it expires.")
    issue.add_argument("--dir", type=Path, default=default_dir, help="CA directory (certs)")
    issue.add_argument("--namespace", default="default")
    issue.add_argument("--service", required=True)
    issue.add_argument("--gateway", action="store_true",
                       help="add the gateway marker: for a static gateway whose "
                            "x-forwarded-client-cert sidecars listing its id in "
                            "mesh.gatewayIdentities keep")
    issue.add_argument("--ttl", default=DEFAULT_TTL,
                       help=f"lifetime, e.g. 1h or 720h (default {DEFAULT_TTL}; at least 1m, "
                            "at most what the intermediate has left)")
    issue.add_argument("--out", type=Path, required=True, metavar="DIR",
                       help="where to write the identity (created if missing)")
    issue.set_defaults(func=run_issue)


def _check_ttl(text: str, ttl: float, ca: CertificateAuthority) -> None:
    """Refuse a TTL the CA would clamp: a static proxy never renews, so a certificate that
    ends sooner than asked would take it down unannounced."""
    if ttl < MIN_TTL:
        raise ValueError(f"--ttl {text} is under the minimum of 1m")
    left = ca.ca_cert.not_valid_after_utc.timestamp() - time.time()
    if ttl > left:
        until = ca.ca_cert.not_valid_after_utc.isoformat(timespec="seconds")
        until = until.replace("+00:00", "Z")
        raise ValueError(f"--ttl {text} outlasts the intermediate CA, valid until {until} "
                         f"({int(left // 3600)}h left): give at most that")


def run_issue(args: argparse.Namespace) -> int:
    """Issue and write the identity; any error is one line on stderr and exit status 1."""
    try:
        ttl = parse_duration(args.ttl)
        ca = CertificateAuthority(args.dir)
        _check_ttl(args.ttl, ttl, ca)
        spiffe_id = spiffe_id_for(ca.trust_domain, check_workload_namespace(args.namespace),
                                  args.service)
        key_pem, csr_pem = generate_key_and_csr(spiffe_id)
        issued = ca.sign_csr(csr_pem, spiffe_id, ttl, gateway=args.gateway)
        args.out.mkdir(parents=True, exist_ok=True)
        # The key first, then what names it: a proxy reading the directory mid-write sees
        # a mismatch (and keeps its identity), never a key readable by others.
        write_atomic(args.out / "key.pem", key_pem, PRIVATE)
        for name, data in (("cert.pem", issued.cert_pem), ("chain.pem", issued.chain_pem),
                           ("bundle.pem", ca.trust_bundle())):
            write_atomic(args.out / name, data, PUBLIC)
    except (CAError, ValueError, OSError) as e:
        print(f"meshctl certs issue: {e}", file=sys.stderr)
        return 1
    until = utc(issued.not_after).isoformat(timespec="seconds").replace("+00:00", "Z")
    marker = " with the gateway marker" if args.gateway else ""
    print(f"issued {spiffe_id}{marker}, valid until {until}, into {args.out} "
          f"(python -m proxy --identity-dir {args.out})")
    if args.gateway:
        print(f"sidecars keep its x-forwarded-client-cert once their mesh.trustedXfccIdentities "
              f"and mesh.gatewayIdentities list {spiffe_id}")
    return 0

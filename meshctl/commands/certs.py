"""`meshctl certs`: create the mesh CA (`init`), show its chain (`show`), proxy certs, tokens,
static proxies' identities (`issue`, meshctl.commands.certissue) and root rotation."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from meshctl.ca import (
    BootstrapTokens,
    CAError,
    CAExistsError,
    CaFiles,
    add_trusted_root,
    fingerprint,
    init_ca,
    retire_root,
    rotate_root,
    trusted_roots,
)
from meshctl.ca.files import load_cert
from meshctl.ca.spiffe import uri_sans
from meshctl.commands import certissue

DEFAULT_DIR = Path("certs")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `certs init` and `certs show`; each sets `args.func(args) -> int`."""
    certs = subparsers.add_parser("certs", help="the mesh certificate authority")
    sub = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create the root and intermediate CA")
    init.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="CA directory (certs)")
    init.add_argument("--trust-domain", default="cluster.local", help="SPIFFE trust domain")
    init.add_argument("--root-cert", type=Path, help="bring your own root certificate (PEM)")
    init.add_argument("--root-key", type=Path, help="its private key; used once, not copied")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    init.set_defaults(func=run_init)

    show = sub.add_parser("show", help="print the intermediate and the trusted roots")
    show.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="CA directory (certs)")
    show.set_defaults(func=run_show)

    proxies = sub.add_parser("proxies", help="each proxy's workload certificate expiry")
    proxies.set_defaults(func=run_proxies)

    token = sub.add_parser("token", help="print a service's bootstrap token (for --token-file)")
    token.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="CA directory (certs)")
    token.add_argument("--namespace", default="default")
    token.add_argument("--service", required=True)
    token.add_argument("--gateway", action="store_true",
                       help="the service's gateway token: for a proxy in --mode gateway, whose "
                            "x-forwarded-client-cert sidecars then keep")
    token.set_defaults(func=run_token)

    certissue.add_issue_parser(sub, DEFAULT_DIR)

    trust = sub.add_parser("trust", help="rotation step 1: also trust another root (PEM)")
    trust.add_argument("root_cert", type=Path, help="the new root certificate (PEM)")
    trust.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="CA directory (certs)")
    trust.set_defaults(func=run_trust)

    rotate = sub.add_parser("rotate", help="rotation step 2: sign with a new root "
                                           "(generated, or --root-cert/--root-key)")
    rotate.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="CA directory (certs)")
    rotate.add_argument("--root-cert", type=Path, help="the new root certificate (PEM)")
    rotate.add_argument("--root-key", type=Path, help="its private key; used once, not copied")
    rotate.set_defaults(func=run_rotate)

    retire = sub.add_parser("retire", help="rotation step 3: stop trusting an old root")
    retire.add_argument("fingerprint", help="SHA-256 fingerprint, as `certs show` prints it")
    retire.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="CA directory (certs)")
    retire.set_defaults(func=run_retire)


def run_init(args: argparse.Namespace) -> int:
    """Create the CA; a CA error is one line on stderr and exit status 1."""
    try:
        ca = init_ca(
            args.dir,
            args.trust_domain,
            root_cert=args.root_cert,
            root_key=args.root_key,
            force=args.force,
        )
    except CAExistsError as e:
        print(f"meshctl certs init: {e}; --force replaces it (every issued certificate then "
              "stops being trusted)", file=sys.stderr)
        return 1
    except (CAError, ValueError) as e:
        print(f"meshctl certs init: {e}", file=sys.stderr)
        return 1
    print(f"Created the mesh CA in {ca.directory} (trust domain {args.trust_domain}).")
    if args.root_key is not None:
        print(f"The root key {args.root_key} was not copied: keep it safe, offline.")
    print()
    return _print_chain(ca)


def run_token(args: argparse.Namespace) -> int:
    """Print the bootstrap token of one service: it can obtain that service's identity only;
    its gateway token (--gateway) also makes a gateway of that service a trusted one."""
    try:
        tokens = BootstrapTokens.load(args.dir)
        make = tokens.gateway_token_for if args.gateway else tokens.token_for
        print(make(args.namespace, args.service))
    except (CAError, ValueError) as e:
        print(f"meshctl certs token: {e}", file=sys.stderr)
        return 1
    return 0


def run_trust(args: argparse.Namespace) -> int:
    """Add a root to the trust bundle; sidecars get it with their next certificate."""
    try:
        fp = add_trusted_root(args.dir, args.root_cert.read_bytes())
    except (CAError, OSError) as e:
        print(f"meshctl certs trust: {e}", file=sys.stderr)
        return 1
    print(f"trusting root {fp}; wait for every sidecar to renew before `certs rotate`")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    """Make a new root the signing root (the old one stays trusted until `certs retire`)."""
    try:
        old = rotate_root(args.dir, root_cert=args.root_cert, root_key=args.root_key)
    except (CAError, OSError) as e:
        print(f"meshctl certs rotate: {e}", file=sys.stderr)
        return 1
    print(f"signing with the new root; the old root {old} is still trusted. The control plane "
          "picks the new intermediate up at its next issuance; once every sidecar has renewed, "
          f"run `meshctl certs retire {old}`")
    return 0


def run_retire(args: argparse.Namespace) -> int:
    """Remove an old root from the trust bundle."""
    try:
        retire_root(args.dir, args.fingerprint)
    except (CAError, OSError) as e:
        print(f"meshctl certs retire: {e}", file=sys.stderr)
        return 1
    print(f"root {args.fingerprint} is no longer trusted (sidecars drop it at their next renewal)")
    return 0


def run_proxies(args: argparse.Namespace) -> int:
    """List each proxy's SPIFFE id and certificate expiry from `GET /api/v1/proxies`; an
    unreachable or refusing control plane is the one `error: ...` line every command prints."""
    # imported here: the CA commands (init, token, issue) run offline, without the client
    from meshctl.commands.calls import make_client, reports_errors
    from meshctl.output import render_table

    @reports_errors
    def run(args: argparse.Namespace) -> int:
        client = make_client(args)  # with the token, as proxy-status: remote reads need it
        proxies = client.field(client._json("GET", "/api/v1/proxies"), "proxies", list)
        now = time.time()
        rows = []
        for p in proxies:
            expiry = p.get("certExpiry") or ""
            rows.append((p["name"], f"{p.get('namespace') or 'default'}/{p['service']}",
                         expiry or "-", _left(expiry, now)))
        # laid out as proxy-status and every other table (columns as wide as their cells)
        print(render_table(("NAME", "NAMESPACE/SERVICE", "CERT-EXPIRY", "LEFT"), rows), end="")
        return 0

    return run(args)


def _left(expiry: str, now: float) -> str:
    """Time left until an RFC 3339 expiry: '3h12m', 'EXPIRED' or '-' (no certificate)."""
    if not expiry:
        return "-"
    left = dt.datetime.fromisoformat(expiry.replace("Z", "+00:00")).timestamp() - now
    if left <= 0:
        return "EXPIRED"
    return f"{int(left // 3600)}h{int(left % 3600 // 60):02d}m"


def run_show(args: argparse.Namespace) -> int:
    """Print the CA's chain of trust."""
    return _print_chain(CaFiles(args.dir))


def _print_chain(ca: CaFiles) -> int:
    try:
        intermediate = load_cert(ca.ca_cert)
        roots = trusted_roots(ca)
    except CAError as e:
        print(f"meshctl certs: {e}", file=sys.stderr)
        return 1
    now = time.time()
    print(_describe("intermediate (signs workload certs)", intermediate, now))
    for i, root in enumerate(roots):
        role = "root (signing)" if i == 0 else "root (trusted, not signing)"
        print(_describe(role, root, now))
    return 0


def _describe(role: str, cert: x509.Certificate, now: float) -> str:
    """A few aligned lines about one certificate."""
    identity = ", ".join(uri_sans(cert)) or _common_name(cert) or "-"
    not_after = cert.not_valid_after_utc
    days = (not_after.timestamp() - now) / 86_400
    left = f"{days:.0f} days left" if days >= 0 else "EXPIRED"
    return "\n".join(
        [
            role,
            f"  subject    {cert.subject.rfc4514_string() or '(empty)'}",
            f"  identity   {identity}",
            f"  not after  {not_after:%Y-%m-%dT%H:%M:%SZ} ({left})",
            f"  sha256     {fingerprint(cert)}",
            "",
        ]
    )


def _common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""

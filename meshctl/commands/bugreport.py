"""``meshctl bug-report``: one archive with the mesh's state to attach to an issue (as
``istioctl bug-report``): versions, resources, proxy status, sync state, checks, golden
metrics, the control plane's metrics and, with ``--include-config-dumps``, each sidecar's
running config. Everything comes through the control plane's API, secrets redacted.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from meshctl.bugreport.archive import write_archive
from meshctl.bugreport.collect import Collector, Options, Unreachable
from meshctl.bugreport.summary import Meta, render
from meshctl.client import resolve_control_plane
from meshctl.commands.observe import window_arg


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``bug-report``."""
    p = subparsers.add_parser(
        "bug-report", help="collect the mesh's state into one archive to attach to an issue",
        description=__doc__.replace("``", "`"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", metavar="FILE.tar.gz", default=None,
                   help="where to write it (default: ami-bug-report-<UTC time>.tar.gz here)")
    p.add_argument("--include-config-dumps", action="store_true",
                   help="add each proxy's running config (needs the API token)")
    p.add_argument("--since", default="10m", metavar="WINDOW", type=window_arg,
                   help="window of the golden metrics, e.g. 30s, 5m (default and most: 10m)")
    p.add_argument("--service", default=None, metavar="S",
                   help="only this service's proxies, golden metrics and route metrics")
    p.add_argument("--timeout", type=seconds, default=10.0, metavar="SECONDS",
                   help="deadline of each call to the control plane (default 10)")
    p.set_defaults(func=run_bug_report)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"expected seconds above 0, got {text!r}")
    return value


def default_name(now: datetime) -> str:
    return f"ami-bug-report-{now.strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


def run_bug_report(args: argparse.Namespace) -> int:
    """Write the archive; 0 even when parts failed (they are in errors.txt), 1 without a
    control plane."""
    from meshctl.commands.calls import make_client  # (argparse set-up stays light)

    now = datetime.now(UTC)
    client = make_client(args)
    options = Options(timeout=args.timeout, window=args.since, service=args.service,
                      config_dumps=args.include_config_dumps)
    try:
        got = Collector(client, options).run()
    except Unreachable as exc:
        print(f"error: {exc}; no report written", file=sys.stderr)
        return 1
    got.members["errors.txt"] = "".join(f"{line}\n" for line in got.errors).encode()
    meta = Meta(created=now.isoformat(timespec="seconds").replace("+00:00", "Z"),
                control_plane=resolve_control_plane(args.control_plane), window=args.since,
                service=args.service, config_dumps=args.include_config_dumps)
    sizes = {"summary.txt": -1, **{k: len(v) for k, v in got.members.items()}}
    members = {"summary.txt": render(meta, got, sizes).encode(), **got.members}
    path = Path(args.output or default_name(now))
    try:
        size = write_archive(path, members)
    except OSError as exc:
        print(f"error: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if got.errors:
        print(f"warning: {len(got.errors)} part{'s' if len(got.errors) != 1 else ''} could not "
              "be collected (errors.txt in the archive):", file=sys.stderr)
        for line in got.errors:
            print(f"  {line}", file=sys.stderr)
    print(f"wrote {path} ({_size(size)}, {len(members)} files); attach it to the issue")
    return 0


def _size(n: int) -> str:
    return f"{n} bytes" if n < 1000 else f"{n / 1000:.1f} kB" if n < 1e6 else f"{n / 1e6:.1f} MB"

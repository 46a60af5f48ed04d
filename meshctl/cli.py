"""`meshctl`: the command line of Ami. Each module in `meshctl.commands` adds its subcommands."""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys

import meshctl.commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshctl", description="Operate an Ami service mesh.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--control-plane", default=None,
                        help="control plane URL (default: $AMI_CONTROL_PLANE or "
                             "http://127.0.0.1:15080)")
    parser.add_argument("--ca-file", default=None,
                        help="roots to verify an https:// control plane with (default: "
                             "$AMI_CA_FILE, else ./certs/trust-bundle.pem if present, else the "
                             "system's)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(meshctl.commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"meshctl.commands.{info.name}")
        add = getattr(module, "add_parser", None)
        if add is not None:
            add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code = func(args)
        sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`meshctl stat | head -1`): stop quietly, as a shell tool
        # killed by SIGPIPE would, and keep the interpreter's final flush from failing again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())

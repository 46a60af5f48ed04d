"""`meshctl`: the command line of Ami. Each module in `meshctl.commands` adds its subcommands;
a run loads only the module of its command (`COMMAND_MODULES`)."""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from meshctl.cligroups import USAGE, grouped_help

# The module of `meshctl.commands` that adds each command. A command loads its own module
# only: `meshctl stat` is not kept waiting for what `demo` or `certs` import (aiohttp, grpc,
# cryptography: ~500 modules in all, against ~250). tests/test_cli_startup.py holds this
# table to what the modules register.
COMMAND_MODULES = {
    "bug-report": "bugreport", "canary": "canary", "certs": "certs",
    "completion": "completion", "demo": "demo",
    "diff": "diff", "stat": "observe", "edges": "observe", "routes": "observe", "authz": "observe",
    "top": "observe",
    "tap": "observe", "check": "observe", "dashboard": "observe", "proxy-config": "proxyconfig",
    "proxy-status": "proxystatus", "apply": "resources", "get": "resources",
    "delete": "resources", "describe": "resources", "serve": "serve", "shift": "shift",
    "validate": "validate", "schema": "validate", "version": "version",
}


class _NoCommand(Exception):
    """The command line names no command the table knows (or is not understood yet)."""


class _CommandFinder(argparse.ArgumentParser):
    """The global options and the command word, as the full parser would read them."""

    def error(self, message: str) -> NoReturn:
        raise _NoCommand(message)


def _command_of(argv: Sequence[str]) -> str | None:
    finder = _CommandFinder(add_help=False)
    finder.add_argument("--control-plane")
    finder.add_argument("--ca-file")
    finder.add_argument("command", nargs="?")
    finder.add_argument("rest", nargs=argparse.REMAINDER)
    try:
        found, _ = finder.parse_known_args(list(argv))
    except _NoCommand:
        return None
    command = found.command
    return command if command in COMMAND_MODULES else None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: with its command's subcommands only when it names one (else,
    for help and errors, every command's)."""
    parser = argparse.ArgumentParser(
        prog="meshctl", description="Operate an Ami service mesh.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--control-plane", default=None, metavar="URL",
                        help="control plane URL (default: $AMI_CONTROL_PLANE or "
                             "http://127.0.0.1:15080)")
    parser.add_argument("--ca-file", default=None, metavar="FILE",
                        help="roots to verify an https:// control plane with (default: "
                             "$AMI_CA_FILE, else ./certs/trust-bundle.pem if present, else the "
                             "system's)")
    # (argparse's flat list of commands is left out of the help: the epilog groups them)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", help=argparse.SUPPRESS)
    command = None if argv is None else _command_of(argv)
    names = sorted(set(COMMAND_MODULES.values())) if command is None else [
        COMMAND_MODULES[command]]
    for name in names:
        module = importlib.import_module(f"meshctl.commands.{name}")
        module.add_parser(subparsers)
    _describe(subparsers)
    # (set once the subcommands took their `meshctl [options] CMD` prefix from the parser)
    parser.usage, parser.epilog = USAGE, grouped_help(subparsers)
    return parser


def _describe(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Give every (sub)command without a description its one-line help as one, so that
    ``meshctl certs token --help`` says what it does, not only its options."""
    for choice in subparsers._choices_actions:
        sub = subparsers.choices[choice.dest]
        if not sub.description and choice.help:
            sub.description = f"{choice.help[0].upper()}{choice.help[1:]}."
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                _describe(action)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["__complete"]:  # the shell asking for candidates (meshctl.completion)
        from meshctl.completion import main as complete

        return complete(argv[1:])
    parser = build_parser(argv)
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

"""`meshctl --help`'s command list, grouped by what a user comes to do (as kubectl's is)."""

from __future__ import annotations

import argparse
import shutil
import textwrap
from typing import Any

# Each command once, in the order a user meets them within its group (tests/test_cli_startup.py
# holds this table to the registered commands).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Basic commands", ("apply", "get", "describe", "delete", "diff", "validate", "schema")),
    ("Traffic", ("shift", "canary")),
    ("Observe", ("stat", "edges", "routes", "authz", "top", "tap", "dashboard")),
    ("Troubleshoot", ("check", "proxy-status", "proxy-config", "bug-report")),
    ("Mesh", ("serve", "certs", "demo")),
    ("Other", ("completion", "version")),
)
USAGE = "meshctl [-h] [--control-plane URL] [--ca-file FILE] COMMAND [ARGS...]"
FOOTER = 'Use "meshctl COMMAND --help" for what a command does and its options.'


def grouped_help(subparsers: argparse._SubParsersAction[Any]) -> str:
    """The registered commands (those of ``subparsers``), each under its group with its
    one-line help, wrapped to the terminal as argparse wraps its own help."""
    helps = {choice.dest: choice.help or "" for choice in subparsers._choices_actions}
    width = max(shutil.get_terminal_size().columns - 2, 40)
    column = max((len(name) for name in helps), default=0) + 4
    blocks = []
    for title, commands in GROUPS:
        lines = [f"{title}:"]
        for name in (c for c in commands if c in helps):
            lines += textwrap.wrap(helps[name], width, initial_indent=f"  {name:<{column - 2}}",
                                   subsequent_indent=" " * column) or [f"  {name}"]
        if len(lines) > 1:
            blocks.append("\n".join(lines))
    return "\n\n".join([*blocks, FOOTER])

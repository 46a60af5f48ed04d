"""`meshctl completion bash|zsh|fish`: print the shell completion script (meshctl.completion)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meshctl.completion import SHELLS, script


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "completion", help="print the shell completion script (bash, zsh, fish)",
        description="Print the script that completes meshctl's commands, options, services, "
                    "kinds, object and proxy names on Tab (names from the control plane "
                    "named by --control-plane or $AMI_CONTROL_PLANE). Load it with: "
                    "source <(meshctl completion bash); in zsh: source <(meshctl completion "
                    "zsh); in fish: meshctl completion fish | source.")
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(script(args.shell))
    return 0

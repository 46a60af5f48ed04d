"""``meshctl diff -f FILE|DIR``: what ``apply`` would change, as a unified diff per object."""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from collections.abc import Iterator
from typing import Any

import yaml

from meshctl.api.errors import ValidationError
from meshctl.commands.calls import make_client, reports_errors
from meshctl.commands.resources import (
    files_arg,
    load_files,
    namespace_for_files_arg,
    post_apply,
    server_errors,
)

SAME, DIFFERENT, FAILED = 0, 1, 2  # kubectl diff's exit codes
# Written by the server, never declared: a file leaving them out changes nothing.
SERVER_FIELDS = ("resourceVersion", "generation", "creationTimestamp", "uid")
_COLOURS = {"---": "\033[1m", "+++": "\033[1m", "@@": "\033[36m", "-": "\033[31m",
            "+": "\033[32m"}
_RESET = "\033[0m"


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``diff``."""
    diff = subparsers.add_parser(
        "diff", help="what apply -f would change, as a unified diff per object",
        description="Ask the control plane what `meshctl apply` of these files would store "
                    "(a server-side dry run: every check, nothing written) and print a "
                    "unified diff of each live object against it. Exit 0: no differences; "
                    "1: differences; 2: an error (nothing to compare).")
    files_arg(diff, required=True)
    namespace_for_files_arg(diff)
    diff.set_defaults(func=run_diff)


def _run(args: argparse.Namespace) -> int:
    try:
        resources = load_files(args.paths, args.namespace)
    except ValidationError as err:
        for issue in err.issues:
            print(f"error: {issue}", file=sys.stderr)
        return FAILED
    if not resources:
        print("error: no objects passed to diff", file=sys.stderr)
        return FAILED
    client = make_client(args)
    status, answer = post_apply(client, resources, dry_run=True)
    if status != 200:
        for line in server_errors(answer, resources) or [f"HTTP {status}"]:
            print(f"error: {line}", file=sys.stderr)
        return FAILED
    results = client.field(answer if isinstance(answer, dict) else {}, "results", list)
    colour = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    changed = False
    for result in results:
        for line in object_diff(result):
            changed = True
            sys.stdout.write(_coloured(line) if colour else line)
    return DIFFERENT if changed else SAME


run_diff = reports_errors(_run, failure=FAILED)


def object_diff(result: dict[str, Any]) -> Iterator[str]:
    """The unified diff of one dry-run result, live object against the object applied;
    nothing when they declare the same (a new object: all of it, added)."""
    if result.get("result") == "unchanged":
        return iter(())
    name = f"{result['kind']} {result['namespace']}/{result['name']}"
    live = result.get("live")
    after = result.get("object")  # None: pruned (its Istio document no longer makes it)
    return difflib.unified_diff(
        _yaml_lines(live) if live else [], _yaml_lines(after) if after else [],
        fromfile=f"{name} (live)" if live else f"{name} (not live)",
        tofile=f"{name} (after apply)" if after else f"{name} (pruned by apply)")


def _yaml_lines(doc: dict[str, Any]) -> list[str]:
    """The declared content as YAML, keys sorted (the order a file was written in is no
    difference the store keeps), server-managed fields left out."""
    doc = {k: v for k, v in doc.items() if k != "status"}
    doc["metadata"] = {k: v for k, v in (doc.get("metadata") or {}).items()
                       if k not in SERVER_FIELDS}
    text = yaml.safe_dump(doc, sort_keys=True, default_flow_style=False)
    return text.splitlines(keepends=True)


def _coloured(line: str) -> str:
    for prefix, code in _COLOURS.items():
        if line.startswith(prefix):
            return f"{code}{line.rstrip(chr(10))}{_RESET}\n"
    return line

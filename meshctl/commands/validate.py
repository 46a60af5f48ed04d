"""``meshctl validate`` (offline checks of resource files) and ``meshctl schema`` (JSON Schema)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from meshctl.api.errors import ValidationError
from meshctl.api.jsonschema import all_schemas, schema_for
from meshctl.api.kinds import KINDS
from meshctl.api.resources import load_documents, load_path, validate_set
from meshctl.commands.calls import KIND_HELP, resolve_kind


def add_parser(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register the ``validate`` and ``schema`` commands."""
    validate = subparsers.add_parser(
        "validate", help="check resource files offline",
        description="Check resource YAML files (a file or a directory tree) without a control "
                    "plane: every document, then the set as a whole.")
    validate.add_argument("-f", "--filename", dest="paths", action="append", required=True,
                          metavar="FILE|DIR|-",
                          help="file, directory or - for stdin (repeatable)")
    validate.set_defaults(func=run_validate)

    schema = subparsers.add_parser(
        "schema", help="print the JSON Schema of resource kinds",
        description="Print the JSON Schema (draft 2020-12) of one kind, or of all kinds.")
    schema.add_argument("kind", nargs="?", metavar="KIND",
                        help=f"one of {KIND_HELP} (any case, singular or plural); default all")
    schema.add_argument("-o", "--output", metavar="DIR",
                        help="write <kind>.json files into DIR instead of printing")
    schema.set_defaults(func=run_schema)


def run_validate(args: argparse.Namespace) -> int:
    """Validate every path together; print 'ok: ...' or every issue; 1 on any issue.

    Documents are checked one by one first; the checks across documents run once all parse.
    """
    resources = []
    issues = []
    for path in args.paths:
        try:
            resources.extend(load_documents(sys.stdin.read(), "<stdin>") if path == "-"
                             else load_path(path))
        except ValidationError as err:
            issues.extend(err.issues)
    if not issues:  # cross-document checks on a partial set would report follow-on noise
        issues.extend(validate_set(resources))
    if not issues and not resources:
        # As `meshctl apply`: no document at all (an empty directory, files named *.txt, an
        # empty stream) is most likely a mistake, and must not pass a CI check as "ok".
        print(f"error: no objects to validate in {', '.join(args.paths)}", file=sys.stderr)
        return 1
    if issues:
        for issue in issues:
            print(issue, file=sys.stderr)
        noun = "error" if len(issues) == 1 else "errors"
        print(f"{len(issues)} {noun} in {', '.join(args.paths)}", file=sys.stderr)
        return 1
    print(f"ok: {len(resources)} resources in {', '.join(args.paths)}")
    return 0


def run_schema(args: argparse.Namespace) -> int:
    """Print or write the JSON Schema of one kind or all kinds."""
    if args.kind is None:
        schemas = all_schemas()
    else:
        try:  # any case of the singular, plural or short name, as for `meshctl get KIND`
            kind = resolve_kind(args.kind)
        except argparse.ArgumentTypeError:
            print(f"error: unknown kind {args.kind!r}, expected one of {', '.join(KINDS)} "
                  f"({KIND_HELP})", file=sys.stderr)
            return 2  # a usage error, as for `meshctl get KIND`
        schemas = {kind: schema_for(kind)}
    if args.output:
        out = Path(args.output)
        try:
            out.mkdir(parents=True, exist_ok=True)
            for kind, schema in schemas.items():
                (out / f"{kind.lower()}.json").write_text(json.dumps(schema, indent=2) + "\n")
        except OSError as err:
            print(f"error: cannot write {out}: {err}", file=sys.stderr)
            return 1
        print(f"wrote {len(schemas)} schema{'s' if len(schemas) != 1 else ''} to {out}")
        return 0
    document = next(iter(schemas.values())) if args.kind else schemas
    print(json.dumps(document, indent=2))
    return 0

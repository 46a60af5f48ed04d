"""``meshctl get all``: every kind's objects, one kubectl-style table per kind that has any."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from meshctl import output
from meshctl.api.kindnames import KIND_PLURALS
from meshctl.client import ControlPlaneClient


def run_get_all(args: argparse.Namespace, client: ControlPlaneClient) -> int:
    """Tables in the order of docs/cli.md's Kinds table (KIND_PLURALS' order), each object
    named ``route.ami.mesh/reviews`` as kubectl names them, a blank line between tables."""
    if args.name is not None:
        print("error: `get all` takes no NAME", file=sys.stderr)
        return 2
    namespace = None if args.all_namespaces else args.namespace
    found = [(kind, docs) for kind in KIND_PLURALS
             if (docs := client.get(kind, None, namespace))]
    if args.output == "json":
        sys.stdout.write(output.to_json({"apiVersion": "ami.mesh/v1alpha1", "kind": "List",
                                         "items": [d for _, docs in found for d in docs]}))
    elif args.output == "yaml":
        sys.stdout.write(output.to_yaml_stream([d for _, docs in found for d in docs]))
    elif not found:
        where = "any namespace" if args.all_namespaces else f"namespace {args.namespace}"
        print(f"No resources found in {where}.", file=sys.stderr)
    else:
        sys.stdout.write("\n".join(output.resource_table(kind, [_named(kind, d) for d in docs],
                                                         args.all_namespaces)
                                   for kind, docs in found))
    return 0


def _named(kind: str, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with its name as ``route.ami.mesh/reviews`` (for the NAME column only)."""
    meta = doc.get("metadata") or {}
    return {**doc, "metadata": {**meta, "name": f"{kind.lower()}.ami.mesh/{meta.get('name')}"}}

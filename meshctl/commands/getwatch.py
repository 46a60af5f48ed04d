"""``meshctl get KIND [NAME] -w``: the table, then a row per change, as ``kubectl get -w``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import Any, TextIO

from meshctl import output
from meshctl.client import ControlPlaneClient, resolve_control_plane, watch_events

# The server sends a keep-alive comment every 15 s: a read silent for this long means the
# control plane is gone (a closed connection ends the stream at once).
READ_TIMEOUT = 45.0


def run_get_watch(args: argparse.Namespace, client: ControlPlaneClient,
                  out: TextIO | None = None) -> int:
    """Watch first (so no change between the list and the watch is missed), list, then
    print a row per change until Ctrl-C (exit 0) or the stream ends (one ``error:``, exit 1)."""
    out = out or sys.stdout
    namespace = None if args.all_namespaces else args.namespace
    resp = client.open_watch(args.kind, namespace, status=True, timeout=READ_TIMEOUT)
    try:
        with resp:
            rows = Rows(args.kind, args.all_namespaces, args.name, args.output, out)
            if args.name is not None:
                rows.start([client.get(args.kind, args.name, args.namespace)])
            else:
                rows.start(client.get(args.kind, None, namespace))
            return rows.follow(watch_events(resp), resolve_control_plane(args.control_plane))
    except KeyboardInterrupt:
        return 0


class Rows:
    """Prints the first table, then one row (or document) per object change."""

    def __init__(self, kind: str, all_namespaces: bool, name: str | None, fmt: str,
                 out: TextIO) -> None:
        self.columns = output.table_columns(kind, all_namespaces)
        self.name, self.fmt, self.out = name, fmt, out
        self.widths = [len(h) for h, _ in self.columns]
        self.last: dict[tuple[str, str], list[str]] = {}  # the row printed last per object

    def start(self, docs: list[dict[str, Any]]) -> None:
        if self.fmt != "table":
            for doc in docs:
                self.document(doc)
            return
        cells = [self.cells(d) for d in docs]
        for row in cells:
            self.widths = [max(w, len(c)) for w, c in zip(self.widths, row, strict=True)]
        self.line([h for h, _ in self.columns])
        for doc, row in zip(docs, cells, strict=True):
            self.last[_key(doc)] = row
            self.line(row)

    def follow(self, events: Iterable[Any], url: str) -> int:
        for event in events:
            if event.type == "ERROR":
                print(f"error: the watch ended: {event.data.get('error')}", file=sys.stderr)
                return 1
            doc = event.data
            if self.name is not None and doc.get("metadata", {}).get("name") != self.name:
                continue
            if self.fmt != "table":
                self.document(doc)
                continue
            row = self.cells(doc)
            if event.type == "DELETED":  # sent without status: the row as last shown
                row = [*self.last.get(_key(doc), row)[:-1], "Deleted"]
            if self.last.get(_key(doc)) == row:
                continue  # a status write that changed nothing this table shows
            self.last[_key(doc)] = row
            self.line(row)
        print(f"error: lost the control plane at {url}: the watch stream ended",
              file=sys.stderr)
        return 1

    def cells(self, doc: dict[str, Any]) -> list[str]:
        return [cell(doc) for _, cell in self.columns]

    def line(self, row: list[str]) -> None:
        # the first table's widths; a longer cell pushes its row only
        text = "   ".join(c.ljust(w) for c, w in zip(row, self.widths, strict=True))
        self.out.write(text.rstrip() + "\n")
        self.out.flush()

    def document(self, doc: dict[str, Any]) -> None:
        if self.fmt == "json":
            self.out.write(output.to_json(doc))
        else:
            self.out.write(output.to_yaml_stream([doc]))
        self.out.flush()


def _key(doc: dict[str, Any]) -> tuple[str, str]:
    meta = doc.get("metadata", {})
    return str(meta.get("namespace", "default")), str(meta.get("name"))

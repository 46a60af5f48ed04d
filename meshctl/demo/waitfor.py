"""`python -m meshctl.demo.waitfor URL [--timeout S] -- CMD...`: exec CMD once URL answers 200.

Under compose the app container owns the network namespace its sidecar joins, so it starts
first; this wrapper keeps the lifecycle rule anyway: the app starts only after its sidecar's
`/ready` answers 200 (docs: hardening.md, lifecycle).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from meshctl.demo.procs import http_ok


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--" not in args:
        print("usage: python -m meshctl.demo.waitfor URL [--timeout S] [--dry-run] -- CMD...",
              file=sys.stderr)
        return 2
    split = args.index("--")
    p = argparse.ArgumentParser(prog="python -m meshctl.demo.waitfor")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--dry-run", action="store_true", help="check the arguments and exit")
    opts = p.parse_args(args[:split])
    command = args[split + 1:]
    if not command:
        p.error("no command after --")
    if opts.dry_run:
        print("ok")
        return 0
    deadline = time.monotonic() + opts.timeout
    pause = 0.05
    while not http_ok(opts.url):
        if time.monotonic() >= deadline:
            print(f"waitfor: {opts.url} not ready after {opts.timeout:g} s", file=sys.stderr)
            return 1
        time.sleep(pause)  # another container: nothing to wait on but the URL itself
        pause = min(pause * 2, 1.0)
    os.execvp(command[0], command)


if __name__ == "__main__":
    sys.exit(main())

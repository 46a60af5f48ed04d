"""What `meshctl demo up` checks before it creates anything (certs, .ami/, the config dir):
the resource set, that it may write where it must, and that every port is free."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from meshctl.ca import CaFiles
from meshctl.demo.procs import taken_ports
from meshctl.demo.topology import ProcessSpec

PORTS_HINT = ("another demo (`meshctl demo status` in its directory) or another program listens "
              "there: stop it, or give this demo other ports with --gateway-port, --base-port "
              "(the apps' and sidecars' block), --api-port and --grpc-port")


def problems(specs: Sequence[ProcessSpec], *, certs: Path, state_dir: Path,
             routes: Path) -> list[str]:
    """Every reason the demo cannot start, one line each (`what: why`); [] when none."""
    found: list[str] = []
    if not routes.is_dir():
        found.append(f"--routes: {routes} is not a directory")
    elif not any(routes.glob("*.yaml")):
        found.append(f"--routes: {routes} holds no *.yaml file (the resources the control "
                     "plane starts with)")
    if certs.exists() and not certs.is_dir():
        found.append(f"--certs-dir: {certs} is not a directory")
    elif not CaFiles(certs).ca_cert.exists() and not _writable(certs):
        found.append(f"--certs-dir: cannot create the mesh CA in {certs}: "
                     f"{_nearest(certs)} is not writable")
    if not _writable(state_dir):
        found.append(f"cannot write the demo's files in {state_dir}: {_nearest(state_dir)} is "
                     "not writable (run it from a directory you can write to)")
    ports = taken_ports(specs)
    if ports:
        found.append("ports: " + (ports[0] if len(ports) == 1 else
                                  f"{len(ports)} ports unavailable:\n  " + "\n  ".join(ports)))
        found.append(PORTS_HINT)
    return found


def _nearest(path: Path) -> Path:
    """``path``, or its closest ancestor that exists (where it would be created)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(path: Path) -> bool:
    """Whether ``path`` can be written to, or created (its nearest existing ancestor)."""
    nearest = _nearest(path)
    return nearest.is_dir() and os.access(nearest, os.W_OK | os.X_OK)

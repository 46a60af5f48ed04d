"""The demo's run directory: `state.json` (supervisor, status, pids, ports) and the log files."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
SUPERVISOR_LOG = "supervisor.log"

# status values: starting -> ready -> stopping -> stopped, or starting -> failed
STARTING, READY, STOPPING, STOPPED, FAILED = "starting", "ready", "stopping", "stopped", "failed"


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """A started process: enough for `status` and `down` to find and check it."""

    name: str
    pid: int
    argv: tuple[str, ...]
    ports: tuple[tuple[str, str, int], ...]
    log: str

    @property
    def hint(self) -> str:
        """A piece of its command line, to tell it from another process that reused the pid."""
        return " ".join(self.argv[1:4])


@dataclass(frozen=True, slots=True)
class RunState:
    """What the supervisor last wrote about the demo."""

    supervisor: int
    status: str = STARTING
    error: str = ""
    processes: tuple[ProcessRecord, ...] = ()
    urls: dict[str, str] = field(default_factory=dict)

    def with_process(self, record: ProcessRecord) -> RunState:
        return replace(self, processes=(*self.processes, record))


class RunDir:
    """`.ami/demo/` (or another directory): logs, tokens, seeded config and the state file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def log(self, name: str) -> Path:
        return self.path / f"{name}.log"

    @property
    def state_file(self) -> Path:
        return self.path / STATE_FILE

    def read(self) -> RunState | None:
        """The last state written, or None when there is none (or it is unreadable)."""
        try:
            raw: dict[str, Any] = json.loads(self.state_file.read_text())
            procs = tuple(
                ProcessRecord(p["name"], int(p["pid"]), tuple(p["argv"]),
                              tuple((w, h, int(n)) for w, h, n in p["ports"]), p["log"])
                for p in raw.get("processes", []))
            return RunState(int(raw["supervisor"]), raw.get("status", STARTING),
                            raw.get("error", ""), procs, dict(raw.get("urls", {})))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, state: RunState) -> None:
        """Replace the state file atomically, so a reader never sees half of it."""
        self.path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".state-")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(state), f, indent=2)
        os.replace(tmp, self.state_file)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

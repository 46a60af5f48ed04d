"""Static mode's reload: read the --config file again and apply it as a control-plane push is.

A reload (SIGHUP, or `--watch-config` seeing the file change) parses the file with the same
parser as the start and hands the snapshot to ``ProxyServer.apply``, the path every pushed
snapshot takes: routes, services, policies and the mesh section change in place, in-flight
requests finish on the config they started with, keep-alive connections stay open, and pools
of removed endpoints drain. All or nothing, as a NACKed push: a file that cannot be read or
parsed, or that the proxy refuses, changes nothing; one error line names the file and the
field, `ami_config_reloads_total{result="rejected"}` counts it, `/config_dump` shows it.

What control-plane mode takes from the command line is fixed for the process's life here too:
the listeners' addresses, `node`, `app` and `appProtocol`. A file changing one of them is
refused whole, saying that a restart is needed for it (Envoy's bootstrap is not reloaded
either).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from proxy.config import Address, ConfigError, Snapshot
from proxy.static import StaticConfig, digest_of, load_yaml, refusal, static_config

if TYPE_CHECKING:
    from proxy.server import ProxyServer

log = logging.getLogger("ami.proxy")
METRIC = "ami_config_reloads"
RESULTS = ("applied", "rejected", "unchanged")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def restart_needed(server: ProxyServer, admin: Address, old: Snapshot,
                   new: Snapshot) -> list[str]:
    """The fields ``new`` changes that the running proxy cannot change in place (a value the
    command line sets, and so the file's does not count, is no change)."""
    changes = []
    before, after = server.listener_addresses(old), server.listener_addresses(new)
    after["admin"] = server.options.listeners.get("admin") or new.listeners.get("admin") \
        or Address("127.0.0.1", 15000)  # as run.py picks it
    before["admin"] = admin
    for kind in sorted(before.keys() | after.keys()):
        was, now = before.get(kind), after.get(kind)
        if was != now:
            changes.append(f"listeners.{kind} ({was or 'none'} -> {now or 'none'})")
    for name, key in (("service", "service"), ("namespace", "namespace"),
                      ("labels", "labels"), ("metrics_name", "metricsName"),
                      ("locality", "locality")):
        if getattr(old.node, name) != getattr(new.node, name):
            changes.append(f"node.{key}")
    if old.app != new.app:
        changes.append(f"app ({old.app} -> {new.app})")
    if old.app_protocol != new.app_protocol and server.options.app_protocol is None:
        changes.append(f"appProtocol ({old.app_protocol} -> {new.app_protocol})")
    return changes


class StaticReloader:
    """Reloads ``path`` into ``server`` on request; keeps what `/config_dump` shows of it."""

    def __init__(self, server: ProxyServer, path: Path, running: StaticConfig, *,
                 admin: Address, watch: bool = False) -> None:
        self.server, self.path, self.admin, self.watch = server, path, admin, watch
        self.running = running  # the file's snapshot as parsed (before command-line overrides)
        self.applied_at = _now()
        self.last_reload: dict[str, str] | None = None
        self.last_error: dict[str, str] | None = None
        self._one_at_a_time = asyncio.Lock()
        self._requested: set[asyncio.Task[str]] = set()  # SIGHUPs' reloads under way
        for result in RESULTS:  # every series from the start, so a rate() sees the first one
            server.stats.inc(METRIC, (("result", result),), 0)
        server.config_source = self

    def request(self, trigger: str) -> None:
        """Reload soon (from a signal handler): in a task this object holds until it ends."""
        task = asyncio.get_running_loop().create_task(self.reload(trigger))
        self._requested.add(task)
        task.add_done_callback(self._requested.discard)

    async def reload(self, trigger: str) -> str:
        """Read the file and apply it if it changed; "applied", "rejected" or "unchanged"."""
        async with self._one_at_a_time:
            try:
                # Reading and YAML-parsing in a thread: a big file's pure-Python parse
                # (~2 ms per KiB) would otherwise stall every request for its duration.
                read = await asyncio.to_thread(self._read, self.running.digest)
            except ConfigError as exc:
                return self._rejected(trigger, str(exc))
            except OSError as exc:
                return self._rejected(trigger, f"{self.path}: cannot read: "
                                               f"{exc.strerror or exc}")
            if read is None:
                return self._done(trigger, "unchanged")
            return self._apply(trigger, *read)

    def _read(self, running: str) -> tuple[object, str] | None:
        """(the loaded YAML, its digest), or None if the bytes are those running."""
        data = self.path.read_bytes()
        digest = digest_of(data)
        if digest == running:
            return None
        if not data.strip():  # most likely a write caught half-way; never an empty mesh
            raise ConfigError(f"{self.path}: the file is empty")
        return load_yaml(self.path, data), digest

    def _apply(self, trigger: str, raw: object, digest: str) -> str:
        try:
            config = static_config(self.path, raw, digest)
            fixed = restart_needed(self.server, self.admin, self.running.snapshot,
                                   config.snapshot)
            if fixed:
                raise ConfigError(f"{self.path}: a restart is needed to change "
                                  f"{', '.join(fixed)}")
            self.server.apply(config.snapshot)  # raises, changing nothing, if it cannot build
        except Exception as exc:  # any refusal, as a NACK: the running config stays
            return self._rejected(trigger, refusal(self.path, exc))
        self.running, self.applied_at = config, _now()
        log.info("config reloaded (%s) from %s: version %s (%s)", trigger, self.path,
                 config.snapshot.version, config.digest)
        return self._done(trigger, "applied")

    def _rejected(self, trigger: str, message: str) -> str:
        self.last_error = {"at": _now(), "trigger": trigger, "error": message}
        log.error("config not reloaded (%s): %s; still serving version %s", trigger, message,
                  self.running.snapshot.version)
        return self._done(trigger, "rejected")

    def _done(self, trigger: str, result: str) -> str:
        self.last_reload = {"at": _now(), "trigger": trigger, "result": result}
        self.server.stats.inc(METRIC, (("result", result),))
        return result

    def dump(self) -> dict[str, Any]:
        """`/config_dump`'s `config_source`."""
        return {"file": str(self.path), "digest": self.running.digest,
                "version": self.running.snapshot.version, "applied_at": self.applied_at,
                "watch": self.watch, "last_reload": self.last_reload,
                "last_error": self.last_error}

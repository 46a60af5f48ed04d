"""The proxy's loggers and their levels, changed at run time (admin `/logging`, Envoy style)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

# Every logger the proxy writes to (tests/test_loglevels.py checks the source names no other).
AMI_LOGGERS = (
    "ami.proxy",             # lifecycle, listeners, upstream errors
    "ami.proxy.admin",       # the admin listener
    "ami.proxy.agent",       # the control-plane stream: connect, config applied, NACKs
    "ami.proxy.appprobe",    # whether the local app serves
    "ami.proxy.connection",  # DEBUG: client connections opened and closed
    "ami.proxy.extauthz",    # CUSTOM policies' provider: errors and timeouts asking it
    "ami.proxy.identity",    # workload certificates
    "ami.proxy.inbound",     # inbound policy (JWT refusals)
    "ami.proxy.jwt",         # JSON Web Key Sets
    "ami.proxy.pool",        # DEBUG: upstream connections opened, closed, retired
    "ami.proxy.router",      # DEBUG: each request's routing decision and outcome
    "ami.proxy.tcp",         # TCP services
    "ami.tracing",           # OTLP export
)
# The HTTP/2 codec: its DEBUG logs every header it (de)compresses, so `level=` leaves it at
# INFO or above (as proxy/__main__.py starts it); naming it sets it.
CODEC_LOGGERS = ("h2", "hpack")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "critical": logging.CRITICAL}


class LevelError(ValueError):
    """A request names an unknown logger or level; the message lists the valid ones."""


class LogLevels:
    """Reads and sets the levels; `on_change()` runs after every change (the hot path's
    debug flags are computed there, never per request).

    Each logger is set on its own, as Envoy's are: the first change pins every logger to the
    level it had (children no longer follow `ami.proxy`), and `reset()` undoes all of it."""

    def __init__(self, on_change: Callable[[], None] = lambda: None) -> None:
        self.on_change = on_change
        self._start: dict[str, int] | None = None  # each logger's own level before any change

    @staticmethod
    def names() -> tuple[str, ...]:
        return AMI_LOGGERS + CODEC_LOGGERS

    def levels(self) -> dict[str, str]:
        """Each logger's effective level, lower case."""
        return {name: logging.getLevelName(logging.getLogger(name).getEffectiveLevel()).lower()
                for name in self.names()}

    def parse(self, query: Mapping[str, str]) -> dict[str, int]:
        """The changes a `/logging` query asks for: `level=X` (all of Ami's loggers) and/or
        `NAME=X` per logger (applied after `level`); raises LevelError."""
        changes: dict[str, int] = {}
        if "level" in query:
            level = _level(query["level"], "level")
            changes.update(dict.fromkeys(AMI_LOGGERS, level))
        for name, value in query.items():
            if name == "level":
                continue
            if name not in self.names():
                raise LevelError(f"unknown logger {name!r}; loggers: "
                                 f"{', '.join(self.names())} (or level=LEVEL for all of Ami's)")
            changes[name] = _level(value, name)
        return changes

    def apply(self, changes: Mapping[str, int]) -> None:
        if not changes:
            return
        if self._start is None:
            self._start = {n: logging.getLogger(n).level for n in self.names()}
            for name in self.names():  # pin: from now on each logger is set on its own
                logger = logging.getLogger(name)
                logger.setLevel(logger.getEffectiveLevel())
        for name, level in changes.items():
            logging.getLogger(name).setLevel(level)
        self.on_change()

    def reset(self) -> None:
        """Back to the levels the proxy started with."""
        if self._start is None:
            return
        for name, level in self._start.items():
            logging.getLogger(name).setLevel(level)
        self._start = None
        self.on_change()


def _level(value: str, name: str) -> int:
    level = LEVELS.get(value.lower())
    if level is None:
        raise LevelError(f"{name}: unknown level {value!r}; levels: {', '.join(LEVELS)}")
    return level


def debug_on(name: str) -> bool:
    """Whether `name` logs DEBUG now: for flags computed when levels change."""
    return logging.getLogger(name).isEnabledFor(logging.DEBUG)

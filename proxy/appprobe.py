"""Readiness of the local app: probed so the mesh sends to an endpoint only once its app serves.

A sidecar is ready before its app listens (the demo and compose start the app once the sidecar
is), so the sidecar's own readiness cannot decide whether its endpoint takes traffic; as with
Kubernetes' readiness probes, the app's state is probed and reported to the control plane on
its own, and the control plane publishes the endpoint only while both are ready.

The probe is a TCP connect to ``--app`` (the default), or an HTTP/1.1 ``GET`` of a path that
must answer 2xx/3xx (``--app-probe /healthz``), or ``none``. It starts NOT_SERVING; one success
makes it SERVING, ``FAILURE_THRESHOLD`` failures in a row make it NOT_SERVING again. While not
serving it probes every ``STARTING_PERIOD`` seconds, so an app that has just bound is published
at once; while serving every ``--app-probe-interval``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from proxy.config import Address

log = logging.getLogger("ami.proxy.appprobe")

SERVING, NOT_SERVING = "serving", "not_serving"
FAILURE_THRESHOLD = 3  # as Kubernetes' failureThreshold: one lost SYN does not unpublish
STARTING_PERIOD = 0.2


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """How to probe: ``kind`` is "tcp", "http" (with ``path``) or "none"."""

    kind: str
    path: str = ""
    interval: float = 1.0
    timeout: float = 1.0

    @classmethod
    def parse(cls, text: str, interval: float) -> ProbeSpec:
        """``tcp`` | ``none`` | an absolute path (HTTP GET); raises ValueError otherwise."""
        if not interval > 0:  # also refuses nan
            raise ValueError(f"--app-probe-interval must be greater than 0, not {interval}")
        if text in ("tcp", "none"):
            return cls(text, interval=interval)
        if text.startswith("/") and not any(c in text for c in " \r\n\t"):
            return cls("http", text, interval=interval, timeout=min(1.0, interval))
        raise ValueError(f"--app-probe: expected tcp, none or an absolute path such as "
                         f"/healthz, not {text!r}")


class AppProbe:
    """Probes the app at ``address`` until stopped; ``state`` is SERVING or NOT_SERVING."""

    def __init__(self, address: Address, spec: ProbeSpec,
                 on_change: Callable[[str], None] | None = None) -> None:
        self.address = address
        self.spec = spec
        self.state = NOT_SERVING
        self.last_error = "not probed yet"
        self.on_change = on_change or (lambda _state: None)
        self._failures = 0

    def record(self, error: str | None) -> None:
        """One probe's outcome (None: success); flips the state per the thresholds."""
        if error is None:
            self._failures = 0
            self.last_error = ""
            self._set(SERVING)
            return
        self._failures += 1
        self.last_error = error
        if self._failures >= FAILURE_THRESHOLD or self.state == NOT_SERVING:
            self._set(NOT_SERVING)

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if state == SERVING:
                log.info("app %s is serving", self.address)
            else:
                log.warning("app %s is not serving (%s): its endpoint is withdrawn",
                            self.address, self.last_error)
            self.on_change(state)

    async def run(self) -> None:
        """Probe forever (cancel to stop)."""
        while True:
            self.record(await self.check())
            await asyncio.sleep(self.spec.interval if self.state == SERVING
                                else min(STARTING_PERIOD, self.spec.interval))

    async def check(self) -> str | None:
        """One probe: None if the app answered as required, else why not."""
        try:
            return await asyncio.wait_for(self._check(), self.spec.timeout)
        except TimeoutError:
            return f"no answer within {self.spec.timeout:g} s"
        except OSError as exc:
            return exc.strerror or type(exc).__name__
        except ValueError:  # a status line past the reader's 64 KiB limit
            return "not an HTTP response"

    async def _check(self) -> str | None:
        reader, writer = await asyncio.open_connection(self.address.host, self.address.port)
        try:
            if self.spec.kind != "http":
                return None
            writer.write(f"GET {self.spec.path} HTTP/1.1\r\nHost: {self.address}\r\n"
                         "User-Agent: ami-app-probe\r\nConnection: close\r\n\r\n".encode())
            line = await reader.readline()
            return _status_error(line)
        finally:
            writer.close()


def _status_error(line: bytes) -> str | None:
    """None for an HTTP status line with a 2xx/3xx code, else what was wrong with it."""
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return "not an HTTP response" if line else "closed without answering"
    status = int(parts[1])
    return None if 200 <= status < 400 else f"answered {status}"

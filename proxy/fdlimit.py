"""The open-file limit: raised at start, and the connection limits fitted under it.

Why: a process keeps the soft RLIMIT_NOFILE it was started with (1024 on many systems) even
when the hard limit is far higher; Go programs such as istiod raise it at start for this reason.
At the soft limit accept() fails with EMFILE and uvloop resets new connections without a word
(the admin listener's /ready included), long before `--max-connections` would refuse anyone
with a 503 and a metric. So the sidecar and the control plane take the hard limit, and a
per-listener connection limit that the descriptors left could not honour is lowered to one
they can, with a warning that says how to get the configured one back.
"""

from __future__ import annotations

import logging

try:
    import resource
except ImportError:  # pragma: no cover - not POSIX: nothing to raise
    resource = None  # type: ignore[assignment]

log = logging.getLogger("ami.proxy")

RESERVED = 64  # descriptors for listeners, the loop, the control-plane stream, logs, admin
PER_CONNECTION = 2  # a proxied client connection can hold one upstream connection too
UNLIMITED_CAP = 1 << 20  # what "unlimited" becomes: the kernel's usual nr_open


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the soft limit now in force."""
    if resource is None:  # pragma: no cover
        return UNLIMITED_CAP
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # e.g. macOS caps the soft limit at OPEN_MAX
            log.debug("open-file limit stays %d: %s", soft, exc)
    return UNLIMITED_CAP if soft == resource.RLIM_INFINITY else soft


def fit_connection_limit(max_connections: int, listeners: int, open_files: int,
                         chosen: bool = True) -> int:
    """The largest per-listener connection limit ``open_files`` descriptors can honour.

    A lowered limit is a warning when the operator chose ``max_connections``, else a note.
    """
    fits = max(1, (open_files - RESERVED) // (PER_CONNECTION * max(1, listeners)))
    if fits >= max_connections:
        return max_connections
    log.log(logging.WARNING if chosen else logging.INFO,
            "open-file limit %d allows about %d connections per listener, not the "
            "%d of --max-connections; using %d (raise `ulimit -n` to get more)",
            open_files, fits, max_connections, fits)
    return fits

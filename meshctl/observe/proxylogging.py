"""Read or set one sidecar's log levels (its admin ``/logging``) for ``meshctl proxy-config log``.

``GET /logging`` is open on the sidecar; ``POST /logging`` is privileged there, so the control
plane calls it as it calls ``/config_dump`` (admincall.py: over mTLS with the admin token the
sidecar registered, or in plaintext on this host).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import aiohttp

from meshctl.observe.admincall import AdminCall

CALL_TIMEOUT = 5.0
MAX_ANSWER = 1 << 20


class LoggingUnavailable(Exception):
    """The sidecar could not be asked, or did not answer with its levels."""


async def call_logging(admin: AdminCall, query: Mapping[str, str] | None = None
                       ) -> tuple[int, dict[str, Any]]:
    """``GET <admin>/logging`` (``query`` None) or ``POST <admin>/logging?query``: the
    sidecar's status (200, or 400 for a request it refused) and JSON answer; raises
    LoggingUnavailable for anything else."""
    write = query is not None
    if write and admin.refusal:
        raise LoggingUnavailable(f"not asked: {admin.refusal}")
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.request("POST" if write else "GET", admin.url("/logging"),
                                params=dict(query or {}), headers=admin.headers,
                                ssl=admin.context) as resp:
            body = await resp.content.read(MAX_ANSWER)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LoggingUnavailable(f"cannot reach its admin listener at {admin.base}: "
                                 f"{exc or type(exc).__name__}") from None
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise LoggingUnavailable(f"the sidecar answered {status} without a JSON object "
                                 "(a proxy too old for /logging?)")
    if status == 200 and isinstance(data.get("loggers"), dict):
        return status, data
    if status == 400:
        return status, data
    raise LoggingUnavailable(f"the sidecar's admin listener answered {status}: "
                             f"{data.get('error', '')}")

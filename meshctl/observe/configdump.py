"""Fetch one sidecar's ``/config_dump`` for ``meshctl proxy-config`` (privileged on both ends).

The route is privileged on the sidecar's admin listener: the control plane calls it over mTLS
with the admin token the sidecar registered, or in plaintext on this host (admincall.py).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from meshctl.observe.admincall import AdminCall

FETCH_TIMEOUT = 5.0
MAX_DUMP = 16 << 20  # bytes read from one answer


class DumpUnavailable(Exception):
    """The sidecar could not be asked, or did not answer with its config."""


async def fetch_config_dump(admin: AdminCall) -> dict[str, Any]:
    """The JSON ``GET <admin>/config_dump`` answers; raises DumpUnavailable."""
    if admin.refusal:
        raise DumpUnavailable(f"not asked: {admin.refusal}")
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(admin.url("/config_dump"), headers=admin.headers,
                            ssl=admin.context) as resp:
            if resp.status != 200:
                raise DumpUnavailable(f"the sidecar's admin listener answered {resp.status}: "
                                      f"{await _error(resp)}")
            body = await resp.content.read(MAX_DUMP + 1)
            if len(body) > MAX_DUMP:
                raise DumpUnavailable("the config dump is larger than 16 MiB")
            data = _json(body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DumpUnavailable(f"cannot reach its admin listener at {admin.base}: "
                              f"{str(exc) or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise DumpUnavailable("the sidecar's answer is not a JSON object")
    return data


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DumpUnavailable(f"the sidecar's answer is not JSON: {exc}") from None


async def _error(resp: aiohttp.ClientResponse) -> str:
    """The ``error`` of an admin listener's JSON refusal, else the start of the body."""
    body = await resp.content.read(4096)
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")

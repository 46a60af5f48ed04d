"""Fetch one sidecar's ``/config_dump`` for ``meshctl proxy-config`` (privileged on both ends).

The route is privileged on the sidecar's admin listener: the control plane presents the admin
token the sidecar registered (a static-mode proxy has none and must be on this host).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

FETCH_TIMEOUT = 5.0
MAX_DUMP = 16 << 20  # bytes read from one answer


class DumpUnavailable(Exception):
    """The sidecar could not be asked, or did not answer with its config."""


async def fetch_config_dump(admin: str, token: str) -> dict[str, Any]:
    """The JSON ``GET http://<admin>/config_dump`` answers; raises DumpUnavailable."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=FETCH_TIMEOUT)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session, \
                session.get(f"http://{admin}/config_dump", headers=headers) as resp:
            if resp.status != 200:
                raise DumpUnavailable(f"the sidecar's admin listener answered {resp.status}")
            body = await resp.content.read(MAX_DUMP + 1)
            if len(body) > MAX_DUMP:
                raise DumpUnavailable("the config dump is larger than 16 MiB")
            data = _json(body)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise DumpUnavailable(f"cannot reach its admin listener at {admin}: "
                              f"{exc or type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise DumpUnavailable("the sidecar's answer is not a JSON object")
    return data


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise DumpUnavailable(f"the sidecar's answer is not JSON: {exc}") from None

"""The operations an aiohttp router serves, as OpenAPI (path template, method) pairs.

A path parameter whose pattern is a list of words (``{plural:routes|gateways}``) is expanded
into one path per word, as OpenAPI describes each kind's paths apart; a static directory is
``<prefix>/{path}``. HEAD (added beside every GET) is left out.
"""

from __future__ import annotations

import re

from aiohttp import web

Operation = tuple[str, str]  # (path template, lower-case method)
_WORDS = re.compile(r"\(\?P<(\w+)>((?:[\w-]+\|)*[\w-]+)\)")


def _templates(resource: web.AbstractResource) -> list[str]:
    info = resource.get_info()
    if "path" in info:
        return [str(info["path"])]
    if "prefix" in info:  # a static directory
        return [str(info["prefix"]).rstrip("/") + "/{path}"]
    paths = [str(info.get("formatter", resource.canonical))]
    pattern = info.get("pattern")
    for name, words in _WORDS.findall(pattern.pattern if pattern is not None else ""):
        paths = [p.replace("{" + name + "}", word) for p in paths for word in words.split("|")]
    return paths


def served_operations(router: web.UrlDispatcher) -> set[Operation]:
    """Every (path template, method) the router answers, e.g. ``("/api/v1/version", "get")``."""
    out: set[Operation] = set()
    for route in router.routes():
        method = route.method.lower()
        if method in ("head", "*") or route.resource is None:
            continue
        out.update((path, method) for path in _templates(route.resource))
    return out

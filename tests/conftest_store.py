"""Shared helpers for store and HTTP API tests: real resource documents and event waiting."""

from __future__ import annotations

import asyncio
from typing import Any

import yaml

from meshctl.api.resources import Resource, parse_document
from meshctl.controlplane.store import Event, Watch
from tests.resources import destination_policy, route

DEADLINE = 5.0  # seconds; every wait in these tests is bounded by it


def policy_doc(name: str, subsets: tuple[str, ...] = ("v1", "v2"),
               namespace: str = "default") -> dict[str, Any]:
    """A DestinationPolicy for host ``name`` defining ``subsets`` (valid on its own)."""
    return dict(yaml.safe_load(destination_policy(name, subsets, namespace=namespace)))


def route_doc(host: str, weights: dict[str, int]) -> dict[str, Any]:
    """A Route for ``host`` splitting traffic over subsets by weight."""
    return dict(yaml.safe_load(route(host, weights)))


def policy(name: str, subsets: tuple[str, ...] = ("v1", "v2"),
           namespace: str = "default") -> Resource:
    return parse_document(policy_doc(name, subsets, namespace))


async def next_event(watch: Watch) -> Event:
    """The next event of ``watch``, failing the test if none arrives before the deadline."""
    async with asyncio.timeout(DEADLINE):
        return await anext(watch)

"""The request path's many-attribute objects keep their attributes in slots.

Past 30 attributes CPython 3.11 stops sharing an object's attribute keys and keeps them in a
plain dict, and every attribute read on the request path then costs more: the listener crossed
that line with two attributes and each request cost ~0.3% (plain) to ~0.8% (mTLS) more
instructions; slots for it and the downstream connection took 2.5% off
(docs/benchmarks.md). An attribute added without its slot lands in ``__dict__``: these tests
name it.
"""

from __future__ import annotations

import pytest

from bench.micro import hot_path

# What may live in an instance dict: a method replaced per listener (Listener._choose_record).
REPLACED_PER_INSTANCE = frozenset({"record"})


@pytest.mark.parametrize("variant", ["plain", "features", "named", "inbound", "mtls", "logged"])
async def test_the_hot_objects_keep_no_attribute_in_a_dict(variant: str) -> None:
    path = await hot_path(variant)
    for _ in range(3):
        path.cycle()  # (their state after requests, keep-alive and all)
    try:
        for obj in (path.client, path.listener):
            extra = set(vars(obj)) - REPLACED_PER_INSTANCE
            assert not extra, f"{type(obj).__name__} attributes without a slot: {sorted(extra)}"
    finally:
        for listener in path.server.listeners.values():
            if listener.server is not None:
                listener.server.close()

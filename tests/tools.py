"""Outside programs a test needs: skipped without them, failed when AMI_REQUIRE_TOOLS=1."""

from __future__ import annotations

import os
import shutil

import pytest


def required_tool(*names: str, hint: str = "") -> str:
    """The path of the first of ``names`` on PATH. Without any, the test skips, or fails when
    AMI_REQUIRE_TOOLS=1 (CI, where a skip would hide that nothing was checked)."""
    for name in names:
        if path := shutil.which(name):
            return path
    hint = f" ({hint})" if hint else ""
    if os.environ.get("AMI_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{names[0]} is required (AMI_REQUIRE_TOOLS=1) but not installed{hint}")
    pytest.skip(f"{names[0]} not installed{hint}")

"""Every fenced YAML example in README.md and docs/*.md is valid, so the docs cannot rot.

A block with an ``apiVersion`` holds resources: each document is parsed by the same code as
``meshctl validate``, then the block is checked as a set. A snippet may leave out the
DestinationPolicy that defines the subsets its Route uses, so "no DestinationPolicy defines
any" is not an error here; naming a subset the block's own policy does not define still is.
A block without ``apiVersion`` is a proxy snapshot (``python -m proxy --config``), parsed as
the proxy parses one.

A block that is deliberately not valid (a schema sketch, an example of an error) is marked
with ``<!-- not-validated: why -->`` on the line just before its fence.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.resources import load_documents, validate_set
from proxy.config import ConfigError
from proxy.static import load_static

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```yaml\n(.*?)^```", flags=re.M | re.S)
SKIP = re.compile(r"<!--\s*not-validated:.*-->\s*$")


def blocks() -> list[tuple[str, str]]:
    """(page:line, body) of every fenced yaml block not marked not-validated."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            previous = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            if not SKIP.search(previous):
                found.append((f"{page.name}:{line}", m.group(1)))
    return found


BLOCKS = blocks()


def test_blocks_found() -> None:
    """The extraction sees the examples (a changed fence style would silently skip them)."""
    pages = {where.split(":")[0] for where, _ in BLOCKS}
    assert {"resources.md", "traffic.md", "proxy.md"} <= pages
    assert len(BLOCKS) >= 20


@pytest.mark.parametrize("where,body", BLOCKS, ids=[w for w, _ in BLOCKS])
def test_yaml_example_is_valid(where: str, body: str, tmp_path: Path) -> None:
    """Resources pass the validator; a proxy snapshot passes the proxy's parser."""
    if "apiVersion:" in body:
        try:
            resources = load_documents(body, where)
        except ValidationError as err:
            pytest.fail("\n".join(map(str, err.issues)))
        issues = [i for i in validate_set(resources)
                  if "no DestinationPolicy defines any" not in str(i)]
        assert not issues, "\n".join(map(str, issues))
    else:
        snapshot = tmp_path / "snapshot.yaml"
        snapshot.write_text(body)
        try:
            load_static(snapshot)
        except ConfigError as err:
            pytest.fail(f"{where}: {err}")

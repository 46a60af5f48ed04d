"""Every YAML example in docs/traffic.md is a valid resource (parser and cross-document checks)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from meshctl.api.resources import load_documents

DOCS = Path(__file__).resolve().parent.parent / "docs" / "traffic.md"
BLOCKS = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_every_feature_has_an_example() -> None:
    """The page shows a YAML example for each traffic feature's resource field."""
    text = "\n".join(BLOCKS)
    for field in ("matches:", "weight:", "timeout:", "retries:", "connectionPool:",
                  "outlierDetection:", "rateLimit:", "fault:", "mirror:", "headers:",
                  "loadBalancer:", "subsets:", "localityLbSetting:", "warmup:"):
        assert field in text, field


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_examples_parse(block: str) -> None:
    """Each example block parses as resources without any validation issue."""
    resources = load_documents(block, str(DOCS))
    assert resources and all(r.kind in ("Route", "DestinationPolicy", "MeshConfig",
                                        "ExternalService", "Canary") for r in resources)

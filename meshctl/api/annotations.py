"""metadata.annotations of a resource, and the one Ami reads: `istio.io/dry-run`."""

from __future__ import annotations

from collections.abc import Mapping

from meshctl.api import fields as F
from meshctl.api.errors import fail

# Istio's spelling: an AuthorizationPolicy so annotated is evaluated and counted, not enforced
DRY_RUN = "istio.io/dry-run"
# Istio reads the value with Go's strconv.ParseBool (and refuses anything else): its spellings
DRY_RUN_TRUE = ("true", "True", "TRUE", "1", "t", "T")
DRY_RUN_FALSE = ("false", "False", "FALSE", "0", "f", "F")
DRY_RUN_VALUES = DRY_RUN_TRUE + DRY_RUN_FALSE


def _value(value: object, path: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        text = str(value).lower() if isinstance(value, bool) else str(value)
        fail(path, f"expected a string, got {F.describe(value)} (quote it: \"{text}\")")
    fail(path, f"expected a string, got {F.describe(value)}")


annotation_map: F.Conv[dict[str, str]] = F.string_map(
    F.string(F.LABEL_KEY, "an annotation key like 'istio.io/dry-run'"), _value)
"""An annotation map: keys as label keys, values any string (Kubernetes' rules)."""


def check_annotations(kind: str, values: Mapping[str, str], f: F.Fields,
                      spec: object = None) -> None:
    """The annotations Ami reads, checked for ``kind`` and its parsed ``spec`` (issues added
    to ``f``, the document's fields); any other annotation is kept and ignored, as
    Kubernetes does."""
    if DRY_RUN not in values:
        return
    where = f"metadata.annotations.{DRY_RUN}"
    if kind != "AuthorizationPolicy":
        f.add(where, f"only an AuthorizationPolicy can be dry-run, not a {kind}")
    elif values[DRY_RUN] not in DRY_RUN_VALUES:
        f.add(where, f"expected \"true\" or \"false\", got {values[DRY_RUN]!r}")
    elif values[DRY_RUN] in DRY_RUN_TRUE and getattr(spec, "action", None) == "CUSTOM":
        # The provider would be asked and its answer enforced: no dry run of it exists
        # (Istio's dry-run is for ALLOW and DENY policies too).
        f.add(where, "a CUSTOM policy cannot be dry-run: its provider decides for real; "
              "dry-run an ALLOW or DENY policy")


def is_dry_run(values: Mapping[str, str]) -> bool:
    """Whether a (checked) resource's annotations make it dry-run."""
    return values.get(DRY_RUN) in DRY_RUN_TRUE

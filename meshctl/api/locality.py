"""Localities (`region/zone/subzone`) and DestinationPolicy `localityLbSetting` (Istio's)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshctl.api import fields as F
from meshctl.api.errors import Issue, ValidationError, fail
from meshctl.api.fields import Fields

# One part of a locality: a label value's characters (topology.kubernetes.io/zone's value).
_PART = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LOCALITY = rf"^{_PART}(/{_PART}){{0,2}}$"
# A `distribute` pattern: a locality whose last part may be `*` (any), or `*` alone.
LOCALITY_PATTERN = rf"^(\*|{_PART}(/{_PART})?(/(\*|{_PART}))?)$"
REGION = rf"^{_PART}$"
# failoverPriority labels that name a part of the locality rather than a workload label
TOPOLOGY_LABELS = {"topology.kubernetes.io/region": 0, "topology.kubernetes.io/zone": 1,
                   "topology.istio.io/subzone": 2}


@dataclass(frozen=True, slots=True)
class Locality:
    """Where a workload runs; ``zone`` and ``subzone`` may be empty (unknown)."""

    region: str
    zone: str = ""
    subzone: str = ""

    @classmethod
    def parse(cls, text: str) -> Locality:
        """``region[/zone[/subzone]]``; ValueError with the expected form otherwise."""
        if not re.fullmatch(LOCALITY, text):
            raise ValueError(f"invalid locality {text[:80]!r}, expected region, region/zone or "
                             "region/zone/subzone (each up to 63 letters, digits, '-', '_', '.')")
        parts = [*text.split("/"), "", ""]
        return cls(parts[0], parts[1], parts[2])

    def part(self, level: int) -> str:
        """0: region, 1: zone, 2: subzone."""
        return (self.region, self.zone, self.subzone)[level]

    def __str__(self) -> str:
        return "/".join(p for p in (self.region, self.zone, self.subzone) if p)


def parse_locality(value: object, path: str) -> Locality:
    """A locality field (`node.locality`, `endpoints[].locality`)."""
    if not isinstance(value, str):
        fail(path, f"expected a string region/zone/subzone, got {F.describe(value)}")
    try:
        return Locality.parse(value)
    except ValueError as err:
        fail(path, str(err))


def pattern_matches(pattern: tuple[str, ...], locality: Locality | None) -> bool:
    """Whether a `distribute` pattern (its parts; `*` or a missing part: any) covers
    ``locality`` (None: a workload with no locality, which only `*` covers), as Istio's."""
    for level, want in enumerate(pattern):
        if want != "*" and (locality is None or locality.part(level) != want):
            return False
    return True


def _overlap(a: tuple[str, ...], b: tuple[str, ...]) -> bool:
    """Whether some locality is covered by both patterns."""
    return all(x == y or "*" in (x, y) for x, y in zip(a, b, strict=False))


@dataclass(frozen=True, slots=True)
class Distribute:
    """Callers in ``source`` send ``to`` (pattern, percent) shares of their traffic."""

    source: tuple[str, ...]  # `from`, split at '/'
    to: tuple[tuple[tuple[str, ...], int], ...]


@dataclass(frozen=True, slots=True)
class LocalityLbSetting:
    """`localityLbSetting`: ``enabled`` None means default (on when outlier detection is)."""

    enabled: bool | None = None
    failover: tuple[tuple[str, str], ...] = ()  # (from region, to region)
    failover_priority: tuple[tuple[str, str | None], ...] = ()  # (label, value to match)
    distribute: tuple[Distribute, ...] = ()


def _split(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split("/"))


_PATTERN = F.string(LOCALITY_PATTERN, "a locality region/zone/subzone whose last part may be "
                    "'*' (any)")


def _parse_distribute(data: object, path: str) -> Distribute:
    f = Fields(data, path)
    source = f.required("from", _PATTERN, "*")
    to = f.required("to", F.string_map(_PATTERN, F.integer(1, 100)), {})
    if isinstance(to, dict) and to:
        total = sum(to.values())
        if total != 100:
            f.add(f.at("to"), f"the weights add up to {total}, not 100")
        patterns = list(to)
        for i, later in enumerate(patterns):
            for earlier in patterns[:i]:
                if _overlap(_split(earlier), _split(later)):
                    f.add(f.at("to"), f"{later!r} overlaps {earlier!r}: a locality would "
                                      "have two weights")
    elif isinstance(to, dict) and f.has("to") and not f.issues:
        f.add(f.at("to"), "must name at least one locality")
    f.finish()
    return Distribute(_split(source), tuple((_split(k), v) for k, v in to.items()))


def _parse_failover(data: object, path: str) -> tuple[str, str]:
    f = Fields(data, path)
    region = F.string(REGION, "a region (no '/' or '*': failover is region to region)")
    source = f.required("from", region, "")
    target = f.required("to", region, "")
    if source and source == target:
        f.add(path, f"from and to are both {source!r}: fail over to another region")
    f.finish()
    return source, target


def _parse_priority_label(value: object, path: str) -> tuple[str, str | None]:
    """`key` (match the caller's value) or `key=value` (match that value)."""
    text = F.string(None, "a label key, or key=value")(value, path)
    key, sep, wanted = text.partition("=")
    F.string(F.LABEL_KEY, "a label key like 'topology.kubernetes.io/zone'")(key, path)
    if sep:
        F.string(F.LABEL_VALUE, "a label value")(wanted, path)
    return key, wanted if sep else None


def parse_locality_lb_setting(data: object, path: str) -> LocalityLbSetting:
    """Parse `localityLbSetting` (cross-field checks against outlierDetection are the
    policy's: see check_locality_lb)."""
    f = Fields(data, path)
    enabled = f.optional("enabled", F.boolean)
    distribute = f.value("distribute", F.list_of(_parse_distribute, 1), ())
    failover = f.value("failover", F.list_of(_parse_failover, 1), ())
    priority = f.value("failoverPriority", F.list_of(_parse_priority_label, 1), ())
    sources = [d.source for d in distribute]
    for i, later in enumerate(sources):
        for j, earlier in enumerate(sources[:i]):
            if _overlap(earlier, later):
                f.add(f"{f.at('distribute')}[{i}].from", f"overlaps distribute[{j}].from: a "
                      "caller would match two rules")
    seen: dict[str, int] = {}
    for i, (source, _) in enumerate(failover):
        if source in seen:
            f.add(f"{f.at('failover')}[{i}].from", f"region {source!r} already fails over "
                  f"in failover[{seen[source]}]")
        seen.setdefault(source, i)
    if distribute and (failover or priority):
        f.add(f.at("distribute"), "set distribute, or failover/failoverPriority, not both "
              "(as Istio: distribute fixes each locality's share, failover orders them)")
    if failover:
        for i, (key, _) in enumerate(priority):
            if key in TOPOLOGY_LABELS:
                f.add(f"{f.at('failoverPriority')}[{i}]", f"{key} cannot be combined with "
                      "failover (failover already orders by region, zone and subzone)")
    if enabled is False and (distribute or failover or priority):
        f.add(f.at("enabled"), "false turns locality load balancing off: distribute, "
                               "failover and failoverPriority would have no effect")
    f.finish()
    return LocalityLbSetting(enabled, failover, priority, distribute)


def check_locality_lb(setting: LocalityLbSetting, outliers: bool, path: str) -> None:
    """Refuse settings that would do nothing: ordering by locality fails over only when
    outlier detection (``outliers``: the host's or a subset's) ejects endpoints, as Istio."""
    if setting.distribute or outliers or setting.enabled is False:
        return
    needing = [k for k, v in (("failover", setting.failover),
                              ("failoverPriority", setting.failover_priority),
                              ("enabled", setting.enabled)) if v]
    if needing:
        raise ValidationError([Issue(None, None, f"{path}.{needing[0]}",
                                     "needs outlierDetection (on the host or a subset): "
                                     "without ejections traffic never fails over")])


def locality_lb_setting_json(setting: LocalityLbSetting) -> dict[str, object]:
    """``setting`` in the resource's shape (what parse_locality_lb_setting reads back): for
    MeshConfig's default in the snapshot."""
    out: dict[str, object] = {}
    if setting.enabled is not None:
        out["enabled"] = setting.enabled
    if setting.distribute:
        out["distribute"] = [{"from": "/".join(d.source),
                              "to": {"/".join(pattern): weight for pattern, weight in d.to}}
                             for d in setting.distribute]
    if setting.failover:
        out["failover"] = [{"from": source, "to": target} for source, target in setting.failover]
    if setting.failover_priority:
        out["failoverPriority"] = [key if value is None else f"{key}={value}"
                                   for key, value in setting.failover_priority]
    return out

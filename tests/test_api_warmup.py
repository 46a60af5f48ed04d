"""DestinationPolicy warmup (slow start): its two spellings, where it is refused, and how a
subset's replaces the host's; the parser and the JSON Schema agree."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from meshctl.api.errors import ValidationError
from meshctl.api.jsonschema import schema_for
from meshctl.api.policy import TrafficPolicy, Warmup, parse_destination_policy
from meshctl.api.resources import parse_document


def _doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "ami.mesh/v1alpha1", "kind": "DestinationPolicy",
            "metadata": {"name": "r"}, "spec": {"host": "reviews", **spec}}


def _schema_accepts(document: dict[str, Any]) -> bool:
    return bool(jsonschema.Draft202012Validator(schema_for("DestinationPolicy"))
                .is_valid(document))


@pytest.mark.parametrize(("spec", "warmup"), [
    ({"warmupDurationSecs": "90s"}, Warmup(90.0)),  # Istio's older field: the window alone
    ({"warmup": {"duration": "2m"}}, Warmup(120.0, 10.0, 1.0)),  # Envoy's defaults
    ({"loadBalancer": "ROUND_ROBIN",
      "warmup": {"duration": "30s", "minimumPercent": 0, "aggression": 2.5}},
     Warmup(30.0, 0.0, 2.5)),
    ({"loadBalancer": "LEAST_REQUEST", "warmup": {"duration": "1s", "minimumPercent": 100}},
     Warmup(1.0, 100.0, 1.0)),
])
def test_both_spellings_are_read(spec: dict[str, Any], warmup: Warmup) -> None:
    """warmup: {duration, minimumPercent, aggression} and warmupDurationSecs, as Istio's."""
    assert parse_destination_policy({"host": "reviews", **spec}, "spec").policy.warmup == warmup
    assert _schema_accepts(_doc(**spec))


@pytest.mark.parametrize(("spec", "path", "words"), [
    ({"loadBalancer": "RANDOM", "warmupDurationSecs": "1m"}, "spec.warmupDurationSecs",
     "only with loadBalancer ROUND_ROBIN or LEAST_REQUEST"),
    ({"loadBalancer": "PEAK_EWMA", "warmup": {"duration": "1m"}}, "spec.warmup",
     "measured latency"),
    ({"loadBalancer": "CONSISTENT_HASH", "consistentHash": {"header": "x"},
      "warmup": {"duration": "1m"}}, "spec.warmup", "not CONSISTENT_HASH"),
    ({"warmup": {"duration": "1m"}, "warmupDurationSecs": "1m"}, "spec.warmupDurationSecs",
     "not both"),
    ({"warmup": {}}, "spec.warmup.duration", "required"),
    ({"warmup": {"duration": "0s"}}, "spec.warmup.duration", "positive"),
    ({"warmupDurationSecs": 60}, "spec.warmupDurationSecs", ""),  # a duration string
    ({"warmup": {"duration": "1m", "minimumPercent": 101}}, "spec.warmup.minimumPercent",
     "between 0 and 100"),
    ({"warmup": {"duration": "1m", "aggression": 0}}, "spec.warmup.aggression",
     "greater than 0"),
    ({"warmup": {"duration": "1m", "slope": 2}}, "spec.warmup.slope", "unknown"),
    ({"subsets": [{"name": "v2", "labels": {"version": "v2"}, "loadBalancer": "RANDOM",
                   "warmupDurationSecs": "1m"}]},
     "spec.subsets[0].warmupDurationSecs", "replaces the host's loadBalancer"),
])
def test_refused_with_the_reason_at_its_path(spec: dict[str, Any], path: str,
                                             words: str) -> None:
    """Each mistake is named at its field; the JSON Schema refuses the same documents."""
    with pytest.raises(ValidationError) as err:
        parse_document(_doc(**spec))
    assert any(i.path == path and words in i.message for i in err.value.issues), \
        err.value.issues
    assert not _schema_accepts(_doc(**spec))


def test_a_subsets_load_balancer_comes_with_its_own_warmup() -> None:
    """A subset setting loadBalancer (or warmup alone, with the default LEAST_REQUEST)
    replaces the host's warmup too, as Istio's subset loadBalancer; one setting only a
    connection pool keeps the host's."""
    spec = parse_destination_policy({"host": "reviews", "warmupDurationSecs": "1m",
                                     "loadBalancer": "ROUND_ROBIN", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}, "connectionPool": {"maxConnections": 5}},
        {"name": "v2", "labels": {"version": "v2"}, "loadBalancer": "RANDOM"},
        {"name": "v3", "labels": {"version": "v3"}, "warmup": {"duration": "10s"}}]}, "spec")
    host = spec.policy
    own = {s.name: s.policy.over(host) for s in spec.subsets if s.policy is not None}
    assert own["v1"].warmup == Warmup(60.0) and own["v1"].load_balancer == "ROUND_ROBIN"
    assert own["v2"].warmup is None
    assert (own["v3"].load_balancer, own["v3"].warmup) == ("LEAST_REQUEST", Warmup(10.0))
    assert TrafficPolicy().warmup is None  # off unless declared

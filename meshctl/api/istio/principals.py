"""Istio's peer principals (`cluster.local/ns/NS/sa/SA`) as alternatives of Ami `from` fields.

Also used for `to` entries, whose `ports` merge the same way.

A source's constraints are kept as a list of alternatives (Ami `from` entries, any of which
may match); combining two constraints is their product, each pair merged. Merging keeps what
both require: the intersection of two positive lists of one field (an empty one: the pair can
match no caller and is dropped), the union of two `not` lists.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

Entry = dict[str, list[Any]]
# `from` fields whose values are compared as sets (intersected when both sides give them)
SETS = ("identities", "services", "namespaces", "ports")
LOCAL = "cluster.local"  # Istio: the local trust domain, whatever it is named


class Refused(ValueError):
    """A principal Ami cannot express; the message says why."""


def principal_alternatives(principals: Iterable[str]) -> list[Entry]:
    """`principals: [...]`: any of them."""
    by_namespace: dict[str, list[str]] = {}
    whole: list[str] = []
    identities: list[str] = []
    for p in principals:
        parts = _local(p)
        if parts is None:
            if "*" in p:
                raise Refused(f"principal pattern {p!r}: Ami matches principals of the local "
                              "trust domain as `cluster.local/ns/NS/sa/SA` or "
                              "`cluster.local/ns/NS/sa/*`, other ones exactly")
            identities.append(f"spiffe://{p}")
        elif parts[1] == "*":
            whole.append(parts[0])
        else:
            by_namespace.setdefault(parts[0], []).append(parts[1])
    out: list[Entry] = []
    if whole:
        out.append({"namespaces": whole})
    out += [{"namespaces": [ns], "services": sas} for ns, sas in by_namespace.items()
            if ns not in whole]
    if identities:
        out.append({"identities": identities})
    return out


def not_principal_factors(principals: Iterable[str]) -> list[list[Entry]]:
    """`notPrincipals: [...]`: none of them; one factor (a list of alternatives) each."""
    factors: list[list[Entry]] = []
    for p in principals:
        parts = _local(p)
        if parts is None:
            if "*" in p:
                raise Refused(f"principal pattern {p!r} in notPrincipals: Ami matches "
                              "`cluster.local/ns/NS/sa/SA`, `cluster.local/ns/NS/sa/*` and "
                              "other trust domains' principals exactly")
            factors.append([{"notIdentities": [f"spiffe://{p}"]}])
        elif parts[1] == "*":
            factors.append([{"notNamespaces": [parts[0]]}])
        else:  # not (namespace NS and account SA): another namespace, or another account
            factors.append([{"notNamespaces": [parts[0]]},
                            {"namespaces": [parts[0]], "notServices": [parts[1]]}])
    return factors


def _local(principal: str) -> tuple[str, str] | None:
    """(namespace, account or `*`) of a local-trust-domain principal; None for any other."""
    parts = principal.split("/")
    if len(parts) == 5 and parts[0] == LOCAL and parts[1] == "ns" and parts[3] == "sa" \
            and parts[2] and "*" not in parts[2] and parts[4] and (
                parts[4] == "*" or "*" not in parts[4]):
        return parts[2], parts[4]
    return None


def product(left: list[Entry], right: list[Entry]) -> list[Entry]:
    """Every pair of alternatives merged; pairs that match no caller dropped."""
    out = []
    for a in left:
        for b in right:
            merged = merge(a, b)
            if merged is not None and merged not in out:
                out.append(merged)
    return out


def merge(a: Entry, b: Entry) -> Entry | None:
    """One entry requiring both (None: no caller can be both); raises Refused for two
    different lists of a field that is not a plain set (ip blocks, principal patterns)."""
    out: Entry = {k: list(v) for k, v in a.items()}
    for key, values in b.items():
        if key not in out:
            out[key] = list(values)
        elif key.startswith("not"):
            out[key] += [v for v in values if v not in out[key]]
        elif key in SETS:
            both = [v for v in out[key] if v in values]
            if not both:
                return None
            out[key] = both
        elif out[key] != values:
            raise Refused(f"{key} given twice for one caller (in the source and in a `when` "
                          "condition): give it in one place")
    for key in SETS:
        positive = out.get(key)
        negative = out.get("not" + key[0].upper() + key[1:], [])
        if positive is not None:
            positive = [v for v in positive if v not in negative]
            if not positive:
                return None
            out[key] = positive
    return out

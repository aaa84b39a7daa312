"""Trait merge strategies, shared by the processing stage (within a member) and reads (across members)."""

from __future__ import annotations

import math
import re
import unicodedata
from datetime import datetime
from typing import Any

from omnijourney.profiles.config import Strategy


def combine_trait(strategy: Strategy, current: dict[str, Any] | None, value: Any, at: datetime) -> dict[str, Any]:
    """Return the trait state after observing `value` at `at`; `current` itself when nothing changes."""
    if current is None:
        start = list(dict.fromkeys(value)) if strategy == "union" and isinstance(value, list) else value
        if strategy == "union" and not isinstance(value, list):
            start = [value]
        return {"value": start, "observed_at": at, "first_observed_at": at}
    old = current["value"]
    first_at = min(current["first_observed_at"], at)
    if strategy == "last":
        if at >= current["observed_at"] and value != old:
            return {"value": value, "observed_at": at, "first_observed_at": first_at}
        return current
    if strategy == "first":
        if at < current["observed_at"]:
            return {"value": value, "observed_at": at, "first_observed_at": first_at}
        return current
    if strategy == "max":
        try:
            bigger = value > old
        except TypeError:
            bigger = False
        if bigger:
            return {"value": value, "observed_at": at, "first_observed_at": first_at}
        return current
    if strategy == "sum":
        if isinstance(value, int | float) and isinstance(old, int | float) and not isinstance(value, bool):
            return {"value": old + value, "observed_at": max(at, current["observed_at"]), "first_observed_at": first_at}
        return current
    # union
    items = list(old) if isinstance(old, list) else [old]
    added = [v for v in (value if isinstance(value, list) else [value]) if v not in items]
    if not added:
        return current
    return {"value": items + added, "observed_at": max(at, current["observed_at"]), "first_observed_at": first_at}


def fits(kind: str, value: Any) -> bool:
    """Whether `value` (as JSON gave it) is of trait type `kind`; no coercion: "42" is not a number."""
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind == "list":
        return isinstance(value, list)
    if kind == "datetime":
        if not isinstance(value, str):
            return False
        try:
            datetime.fromisoformat(value)
        except ValueError:
            return False
        return True
    raise ValueError(f"unknown trait type {kind!r}")


def accepts(kind: str | None, strategy: Strategy, value: Any) -> bool:
    """Whether a trait typed `kind` takes `value`: a union also takes a list of that type."""
    if kind is None:
        return True
    if strategy == "union" and kind != "list" and isinstance(value, list):
        return all(fits(kind, v) for v in value)
    return fits(kind, value)


def merge_member_traits(strategy: Strategy, states: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine one trait's state across cluster members (in member order: oldest first)."""
    out: dict[str, Any] | None = None
    for s in sorted(states, key=lambda s: s["observed_at"]):
        if out is None:
            out = dict(s)
            continue
        if strategy == "sum":
            if isinstance(s["value"], int | float) and isinstance(out["value"], int | float):
                out = {**out, "value": out["value"] + s["value"], "observed_at": s["observed_at"]}
            continue
        if strategy == "union":
            values = s["value"] if isinstance(s["value"], list) else [s["value"]]
            out = combine_trait("union", out, values, s["observed_at"])
            continue
        out = combine_trait(strategy, out, s["value"], s["observed_at"])
    assert out is not None
    return out


def fold(text: str) -> str:
    """Lower-case and strip accents, so "Nováková" is found by "novak"."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def search_terms(name: str) -> set[str]:
    return {t[:100] for t in re.split(r"[\s,.;]+", fold(name)) if t}

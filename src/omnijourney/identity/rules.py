"""Identity rules as configuration: a YAML file validated at start-up (never a surprise mid-stream)."""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_RULES = Path(__file__).with_name("rules.yaml")


def _compile(pattern: str, what: str) -> re.Pattern[str]:
    """Compile a configured regular expression; a broken one is a validation error naming it
    (re.error is no ValueError, so pydantic would let it through without the field's location)."""
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{what} {pattern!r} is not a valid regular expression: {exc}") from None


class IdentifierType(BaseModel):
    model_config = ConfigDict(extra="forbid")

    priority: int = Field(ge=0)
    #: dotted paths into the message where values of this type are found
    fields: list[str] = Field(min_length=1)
    normalise: Literal["none", "email", "phone", "loyalty_card", "lower"] = "none"
    #: regular expression a normalised value must match (loyalty card formats)
    pattern: str | None = None
    #: most values of this type a profile may hold (within window_days, if set)
    limit: int = Field(default=10, ge=1)
    window_days: int | None = Field(default=None, ge=1)
    #: two profiles holding different values of a veto type never merge
    veto: bool = False
    #: identifies a person (a profile with one is "identified"); anonymous and device ids do not
    identifying: bool = False
    #: on a shared device, the link moves to the latest person who logged in
    follows_latest: bool = False

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            _compile(v, "pattern")
        return v


class ExtractionNode:
    """A field name's sub-fields, and the identifier types (with their place in the plan) found there."""

    __slots__ = ("children", "leaves")

    def __init__(self) -> None:
        self.children: dict[str, ExtractionNode] = {}
        self.leaves: list[tuple[int, str, IdentifierType]] = []


class IdentityRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_phone_region: str = Field(default="CZ", min_length=2, max_length=2)
    identifier_types: dict[str, IdentifierType]
    blocked_values: list[str] = Field(default_factory=list)
    blocked_patterns: list[str] = Field(default_factory=list)
    #: trust levels whose events may merge two identified profiles
    merge_trust: Literal["trusted_only", "any"] = "trusted_only"

    @model_validator(mode="after")
    def _check(self) -> IdentityRules:
        if not self.identifier_types:
            raise ValueError("at least one identifier type is needed")
        for name in self.identifier_types:
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,31}", name):
                raise ValueError(f"identifier type name {name!r} must be lower_snake_case, at most 32 chars")
        by_priority: dict[int, list[str]] = {}
        for name, t in self.identifier_types.items():
            by_priority.setdefault(t.priority, []).append(name)
        shared = {p: names for p, names in by_priority.items() if len(names) > 1}
        if shared:
            which = "; ".join(f"{', '.join(names)} all have {p}" for p, names in sorted(shared.items()))
            raise ValueError(f"identifier type priorities must be distinct (they order resolution): {which}")
        for p in self.blocked_patterns:
            _compile(p, "blocked_patterns entry")
        return self

    @cached_property
    def by_priority(self) -> list[tuple[str, IdentifierType]]:
        return sorted(self.identifier_types.items(), key=lambda kv: -kv[1].priority)

    @cached_property
    def blocked(self) -> frozenset[str]:
        return frozenset(v.strip().lower() for v in self.blocked_values)

    @cached_property
    def blocked_res(self) -> list[re.Pattern[str]]:
        return [re.compile(p, re.IGNORECASE) for p in self.blocked_patterns]

    @cached_property
    def blocked_match(self) -> list[re.Pattern[str]]:
        """`blocked_res` with every pattern free of groups joined into one alternation (one search
        instead of one per pattern); patterns with groups (back-references) stay on their own."""
        alone = [p for p in self.blocked_patterns if re.compile(p).groups]
        joinable = [p for p in self.blocked_patterns if not re.compile(p).groups]
        out = [re.compile(p, re.IGNORECASE) for p in alone]
        if joinable:
            try:
                out.insert(0, re.compile("|".join(f"(?:{p})" for p in joinable), re.IGNORECASE))
            except re.error:  # an inline global flag, say: keep them apart
                out[:0] = [re.compile(p, re.IGNORECASE) for p in joinable]
        return out

    @cached_property
    def extraction_tree(self) -> ExtractionNode:
        """`extraction_plan` as a tree of field names: each key is looked up once per message."""
        root = ExtractionNode()
        order = 0
        for name, id_type, paths in self.extraction_plan:
            for path in paths:
                node = root
                for part in path:
                    node = node.children.setdefault(part, ExtractionNode())
                node.leaves.append((order, name, id_type))
                order += 1
        return root

    @cached_property
    def extraction_plan(self) -> list[tuple[str, IdentifierType, list[tuple[str, ...]]]]:
        """Types in priority order with their field paths pre-split (the hot path of resolution)."""
        return [(name, t, [tuple(f.split(".")) for f in t.fields]) for name, t in self.by_priority]

    @cached_property
    def normalise_cache(self) -> dict[tuple[str, object], str | None]:
        return {}

    def priority(self, id_type: str) -> int:
        return self.identifier_types[id_type].priority


def load_rules(path: str | Path | None = None) -> IdentityRules:
    path = Path(path or os.environ.get("OMNIJOURNEY_IDENTITY_RULES") or DEFAULT_RULES)
    with path.open() as fh:
        data = yaml.safe_load(fh)
    return IdentityRules.model_validate(data)

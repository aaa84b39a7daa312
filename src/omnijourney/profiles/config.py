"""Profile configuration: trait merge strategies and the lifecycle-stage mapping (YAML, validated)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_CONFIG = Path(__file__).with_name("profile.yaml")
Strategy = Literal["last", "first", "max", "sum", "union"]
TraitType = Literal["string", "number", "integer", "boolean", "datetime", "list"]
#: the types each strategy can combine (an untyped trait takes whatever comes, as before)
STRATEGY_TYPES: dict[str, set[str]] = {
    "sum": {"number", "integer"},
    "max": {"number", "integer", "datetime", "string"},
    "union": {"list", "string", "number", "integer", "boolean"},
}
#: where a refused trait value is kept, per member, next to the traits (`profile_traits` key prefix)
REJECTED_PREFIX = "$rejected:"
STAGES = ("awareness", "consideration", "purchase", "retention", "advocacy")


class ProfileConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_strategy: Strategy = "last"
    trait_strategies: dict[str, Strategy] = Field(default_factory=dict)
    #: optional type per trait: a value that does not fit is refused (recorded, the old value kept)
    trait_types: dict[str, TraitType] = Field(default_factory=dict)
    lifecycle: dict[str, list[str]]
    retention_min_orders: int = Field(default=2, ge=2)
    advocacy_min_nps: int = Field(default=9, ge=0, le=10)

    @model_validator(mode="after")
    def _stages(self) -> ProfileConfig:
        unknown = set(self.lifecycle) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown lifecycle stages {sorted(unknown)}; stages are {STAGES}")
        for key, kind in self.trait_types.items():
            if key.startswith(REJECTED_PREFIX) or len(key) > 100 - len(REJECTED_PREFIX):
                raise ValueError(
                    f"trait {key!r}: the prefix {REJECTED_PREFIX!r} is reserved and typed trait names"
                    f" are at most {100 - len(REJECTED_PREFIX)} characters"
                )
            allowed = STRATEGY_TYPES.get(self.strategy(key))
            if allowed is not None and kind not in allowed:
                raise ValueError(
                    f"trait {key!r}: type {kind} cannot use strategy {self.strategy(key)} (allowed: {sorted(allowed)})"
                )
        return self

    def strategy(self, key: str) -> Strategy:
        return self.trait_strategies.get(key, self.default_strategy)

    @cached_property
    def stage_of_event(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for stage, names in self.lifecycle.items():
            for name in names:
                out[name] = max(out.get(name, 0), STAGES.index(stage))
        return out

    def stage_rank(self, event_name: str | None) -> int:
        wildcard = self.stage_of_event.get("*", 0)
        return max(wildcard, self.stage_of_event.get(event_name or "", 0))


def load_profile_config(path: str | Path | None = None) -> ProfileConfig:
    path = Path(path or os.environ.get("OMNIJOURNEY_PROFILE_CONFIG") or DEFAULT_CONFIG)
    with path.open() as fh:
        return ProfileConfig.model_validate(yaml.safe_load(fh))

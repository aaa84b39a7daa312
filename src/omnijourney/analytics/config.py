"""The journey-stage mapping (stages.yaml): which events put a customer in which stage."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from omnijourney.analytics.funnels import Step

DEFAULT_PATH = Path(__file__).with_name("stages.yaml")
STAGE_NAMES = ("awareness", "consideration", "purchase", "retention", "advocacy")


@dataclass(frozen=True)
class StageConfig:
    stages: tuple[Step, ...]
    window_days: int


def _step(raw: dict[str, Any], where: str) -> Step:
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a stage is a mapping")
    unknown = set(raw) - {"name", "events", "types", "where", "any_of"}
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    conds = []
    for c in raw.get("where") or []:
        if not (isinstance(c, list) and len(c) == 3):
            raise ValueError(f"{where}: a condition is [column, op, value]")
        conds.append((str(c[0]), str(c[1]), c[2]))
    return Step(
        name=str(raw.get("name", where)),
        events=tuple(str(e) for e in raw.get("events") or ()),
        types=tuple(str(t) for t in raw.get("types") or ()),
        where=tuple(conds),
        any_of=tuple(_step(a, f"{where}.any_of[{i}]") for i, a in enumerate(raw.get("any_of") or ())),
    )


def load_stage_config(path: Path | None = None) -> StageConfig:
    path = path or Path(os.environ.get("OMNIJOURNEY_ANALYTICS_STAGES", DEFAULT_PATH))
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("stages"), list):
        raise ValueError(f"{path}: needs a list of stages")
    stages = tuple(_step(s, f"stages[{i}]") for i, s in enumerate(raw["stages"]))
    if [s.name for s in stages] != list(STAGE_NAMES):
        raise ValueError(f"{path}: the stages are, in order: {', '.join(STAGE_NAMES)}")
    for s in stages:
        if not (s.events or s.types or s.any_of):
            raise ValueError(f"{path}: stage {s.name!r} matches no event")
    window = int(raw.get("window_days", 90))
    if window <= 0:
        raise ValueError(f"{path}: window_days must be positive")
    return StageConfig(stages=stages, window_days=window)

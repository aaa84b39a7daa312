"""engage.yaml: segment definitions and recommendation weights, validated at start-up."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import ValidationError

from omnijourney.engage.schemas import EngageConfig

DEFAULT_CONFIG = Path(__file__).with_name("engage.yaml")


class EngageConfigError(ValueError):
    pass


def load_engage_config(path: str | Path | None = None) -> EngageConfig:
    path = Path(path or os.environ.get("OMNIJOURNEY_ENGAGE_CONFIG") or DEFAULT_CONFIG)
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    try:
        return EngageConfig.model_validate(data)
    except ValidationError as exc:
        raise EngageConfigError(f"{path}: {exc}") from exc


@lru_cache(maxsize=1)
def default_config() -> EngageConfig:
    return load_engage_config()

"""Service configuration (YAML, validated at start-up)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

DEFAULT_CONFIG = Path(__file__).with_name("service.yaml")


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    #: a later conversation within this many hours of an earlier one's last activity is a repeat contact
    lost_context_window_hours: float = Field(default=72, gt=0, le=24 * 90)
    #: what makes two conversations the same matter
    same_matter: list[Literal["order", "topic"]] = Field(default_factory=lambda: ["order", "topic"], min_length=1)


def load_service_config(path: str | Path | None = None) -> ServiceConfig:
    path = Path(path or os.environ.get("OMNIJOURNEY_SERVICE_CONFIG") or DEFAULT_CONFIG)
    with path.open() as fh:
        return ServiceConfig.model_validate(yaml.safe_load(fh) or {})

"""Journey definitions: YAML files validated with Pydantic at start-up, versioned by content hash.

A journey is a trigger, an optional entry condition, a list of steps (each runs once per entry,
forward only, so an entry can never loop), exit events, a conversion goal and a hold-out share.
Conditions reuse the segment rule language (`engage.schemas.normalise_rule`), so "cart still
idle", "e-mail consent granted" or "bought in the last 30 days" read the same everywhere.

Built-in templates live in `journey_defs/*.yaml` and ship **disabled**; a deployment enables
them with `OMNIJOURNEY_JOURNEYS_ENABLED=abandoned_cart,welcome` (or `all`) and adds its own files
in `OMNIJOURNEY_JOURNEYS_DIR` (a file there with a built-in's key replaces it).
"""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from omnijourney.engage.schemas import KEY_PATTERN, normalise_rule
from omnijourney.ingest.spec import CHANNELS

BUILTIN_DIR = Path(__file__).with_name("journey_defs")
END = "end"


class JourneyConfigError(ValueError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _rule(v: Any) -> dict[str, Any]:
    return normalise_rule(v)


class PropertyTest(_Strict):
    property: str = Field(min_length=1, max_length=100)
    op: Literal["eq", "ne", "in", "exists", "gte", "lte"] = "eq"
    value: Any = None


class EventTrigger(_Strict):
    name: str = Field(min_length=1, max_length=200)
    where: list[PropertyTest] = Field(default_factory=list)
    #: events older than this (event time vs processing time) do not trigger: an import of
    #: history, or a rebuild, must not start journeys for what happened long ago
    max_age_hours: float = Field(default=24.0, gt=0)


class SegmentTrigger(_Strict):
    key: str


class InactivityTrigger(_Strict):
    """An active cart with items left unchanged for `cart_idle_minutes` (commerce's abandoned-cart signal)."""

    cart_idle_minutes: int = Field(ge=1)
    #: carts idle longer than this are not entered (an old cart is not "just abandoned")
    max_idle_minutes: int = Field(default=7 * 24 * 60, ge=1)
    min_value: float = 0.0

    @model_validator(mode="after")
    def _window(self) -> InactivityTrigger:
        if self.max_idle_minutes <= self.cart_idle_minutes:
            raise ValueError("max_idle_minutes must be greater than cart_idle_minutes")
        return self


class DateTrigger(_Strict):
    """A date: an annual trait (`trait: birthday`, month and day) or days since the last order (lapsing)."""

    trait: str | None = None
    days_since_last_order: int | None = Field(default=None, ge=1)
    #: how many days late an entry may still happen (a worker that was down catches up within this)
    window_days: int = Field(default=7, ge=1)

    @model_validator(mode="after")
    def _one(self) -> DateTrigger:
        if (self.trait is None) == (self.days_since_last_order is None):
            raise ValueError("a date trigger needs exactly one of trait or days_since_last_order")
        return self


class Trigger(_Strict):
    event: EventTrigger | None = None
    segment: SegmentTrigger | None = None
    inactivity: InactivityTrigger | None = None
    date: DateTrigger | None = None

    @model_validator(mode="after")
    def _one(self) -> Trigger:
        kinds = [k for k in ("event", "segment", "inactivity", "date") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("a trigger is exactly one of event, segment, inactivity, date")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("event", "segment", "inactivity", "date") if getattr(self, k) is not None)


class Reentry(_Strict):
    #: never: once per profile; after_exit: again once the previous entry ended; always: every trigger
    mode: Literal["never", "after_exit", "always"] = "after_exit"
    cooldown_days: float = Field(default=0.0, ge=0)


class Conversion(_Strict):
    event: str
    within_days: float = Field(default=7.0, gt=0)


class Wait(_Strict):
    minutes: float = 0
    hours: float = 0
    days: float = 0

    @property
    def delta(self) -> timedelta:
        return timedelta(minutes=self.minutes, hours=self.hours, days=self.days)


class Branch(_Strict):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    if_: dict[str, Any] = Field(alias="if")
    then: str
    else_: str = Field(default=END, alias="else")

    @field_validator("if_")
    @classmethod
    def _condition(cls, v: Any) -> dict[str, Any]:
        return _rule(v)


class Send(_Strict):
    """A message: the first of `channels`, ordered by the customer's preferred channel, that has
    consent for `purpose` and an address. E-mail goes over SMTP; sms / push / chat through the
    provider webhook configured for that channel."""

    purpose: str = Field(default="marketing", min_length=1, max_length=64)
    channels: list[str] = Field(default_factory=lambda: ["email"], min_length=1)
    template: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    subject: str = Field(default="", max_length=300)
    with_recommendations: bool = True
    with_offer: bool = True

    @field_validator("channels")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [c for c in v if c not in CHANNELS]
        if bad:
            raise ValueError(f"unknown channels {bad}")
        return v


class WebhookAction(_Strict):
    url: str = Field(pattern=r"^https?://")
    #: name of the environment variable holding the HMAC secret
    secret_env: str = "OMNIJOURNEY_WEBHOOK_SECRET"
    event: str = Field(default="journey.step", max_length=100)


class UpdateTrait(_Strict):
    key: str = Field(min_length=1, max_length=100)
    value: Any


class Task(_Strict):
    title: str = Field(min_length=1, max_length=300)
    #: the location code, `preferred` for the customer's preferred store, or `pickup` for the pickup
    #: store of the order that triggered the entry (its `pickup_location`; else the preferred store)
    location: str | None = "preferred"


class Step(_Strict):
    key: str
    next: str | None = None
    wait: Wait | None = None
    condition: dict[str, Any] | None = None
    branch: Branch | None = None
    send: Send | None = None
    webhook: WebhookAction | None = None
    update_trait: UpdateTrait | None = None
    task: Task | None = None

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not KEY_PATTERN.match(v) or v == END:
            raise ValueError("a step key is lower-case letters, digits and _ (not 'end')")
        return v

    @field_validator("condition")
    @classmethod
    def _condition(cls, v: Any) -> Any:
        return None if v is None else _rule(v)

    @model_validator(mode="after")
    def _one(self) -> Step:
        kinds = [k for k in STEP_KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"step {self.key}: exactly one of {', '.join(STEP_KINDS)}")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in STEP_KINDS if getattr(self, k) is not None)


STEP_KINDS = ("wait", "condition", "branch", "send", "webhook", "update_trait", "task")


class JourneyDef(_Strict):
    key: str
    name: str = Field(min_length=1, max_length=200)
    description: str = ""
    enabled: bool = False
    trigger: Trigger
    entry_condition: dict[str, Any] | None = None
    reentry: Reentry = Field(default_factory=Reentry)
    exit_on: list[str] = Field(default_factory=list)
    conversion: Conversion | None = None
    holdout_percent: float = Field(default=0.0, ge=0, le=50)
    steps: list[Step] = Field(min_length=1, max_length=50)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str) -> str:
        if not KEY_PATTERN.match(v):
            raise ValueError("a journey key is lower-case letters, digits and _")
        return v

    @field_validator("entry_condition")
    @classmethod
    def _entry(cls, v: Any) -> Any:
        return None if v is None else _rule(v)

    @model_validator(mode="after")
    def _graph(self) -> JourneyDef:
        index = {}
        for i, s in enumerate(self.steps):
            if s.key in index:
                raise ValueError(f"step key {s.key!r} is used twice")
            index[s.key] = i
        for i, s in enumerate(self.steps):
            targets = [s.next] if s.next else []
            if s.branch:
                targets += [s.branch.then, s.branch.else_]
            for t in targets:
                if t == END:
                    continue
                if t not in index:
                    raise ValueError(f"step {s.key}: unknown next step {t!r}")
                if index[t] <= i:  # forward only: an entry runs each step at most once, never loops
                    raise ValueError(f"step {s.key}: next step {t!r} must come later in the list")
        return self

    def step(self, key: str) -> Step:
        return next(s for s in self.steps if s.key == key)

    def after(self, step: Step) -> str | None:
        """The step that follows `step` when it has no explicit next (None: the journey ends)."""
        if step.next:
            return None if step.next == END else step.next
        i = self.steps.index(step)
        return self.steps[i + 1].key if i + 1 < len(self.steps) else None

    def content_hash(self) -> str:
        body = self.model_dump(mode="json", by_alias=True, exclude={"enabled"})
        return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _load_file(path: Path) -> JourneyDef:
    try:
        data = yaml.safe_load(path.read_text())
        return JourneyDef.model_validate(data)
    except (ValidationError, yaml.YAMLError, ValueError) as exc:
        raise JourneyConfigError(f"{path}: {exc}") from exc


def load_journeys(directory: str | Path | None = None, enabled: str | None = None) -> list[JourneyDef]:
    """Built-ins plus the files of `directory` (default `OMNIJOURNEY_JOURNEYS_DIR`), validated.

    `enabled` (default `OMNIJOURNEY_JOURNEYS_ENABLED`): `all`, or comma-separated keys turned on in
    addition to the files' own `enabled: true`. A bad file raises `JourneyConfigError` naming it."""
    found: dict[str, JourneyDef] = {}
    dirs = [BUILTIN_DIR]
    extra = directory if directory is not None else os.environ.get("OMNIJOURNEY_JOURNEYS_DIR")
    if extra:
        dirs.append(Path(extra))
    for d in dirs:
        for path in sorted(d.glob("*.yaml")):
            j = _load_file(path)
            found[j.key] = j
    names = enabled if enabled is not None else os.environ.get("OMNIJOURNEY_JOURNEYS_ENABLED", "")
    wanted = {n.strip() for n in names.split(",") if n.strip()}
    unknown = wanted - set(found) - {"all"}
    if unknown:
        raise JourneyConfigError(f"OMNIJOURNEY_JOURNEYS_ENABLED names unknown journeys: {sorted(unknown)}")
    out = []
    for key in sorted(found):
        j = found[key]
        if "all" in wanted or key in wanted:
            j = j.model_copy(update={"enabled": True})
        out.append(j)
    return out


@lru_cache(maxsize=1)
def default_journeys() -> tuple[JourneyDef, ...]:
    return tuple(load_journeys())


def holdout(journey_key: str, profile_id: int, percent: float) -> bool:
    """Deterministic control-group membership: the same profile is always in (or out of) a journey's hold-out."""
    if percent <= 0:
        return False
    digest = hashlib.sha256(f"{journey_key}:{profile_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 < percent * 100

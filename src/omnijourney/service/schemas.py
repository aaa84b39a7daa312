"""Request bodies of the service API (Pydantic v2); unknown fields are refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

Channel = Literal["chat", "email", "phone", "social", "sms", "store"]
Author = Literal["customer", "agent", "bot"]
Text = Annotated[str, StringConstraints(min_length=1, max_length=20_000)]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Ref = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class IdentifierIn(_In):
    type: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    value: Annotated[str, StringConstraints(min_length=1, max_length=255)]


class _Customer(_In):
    """Who the customer is: a profile id, or an identifier to look the profile up by (or neither)."""

    profile_id: int | None = Field(default=None, ge=1)
    identifier: IdentifierIn | None = None

    @model_validator(mode="after")
    def _one(self) -> _Customer:
        if self.profile_id is not None and self.identifier is not None:
            raise ValueError("give profile_id or identifier, not both")
        return self


class FirstMessageIn(_In):
    author: Author = "customer"
    text: Text
    external_id: Ref | None = None
    author_id: Name | None = None

    _blank = field_validator("text")(_not_blank)


class ConversationIn(_Customer):
    channel: Channel
    external_id: Ref | None = Field(default=None, description="the channel's own id (e-mail thread, ...); idempotent")
    topic: Name | None = None
    subject: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=300)] | None = None
    order_ids: list[Ref] = Field(default_factory=list, max_length=20)
    status: Literal["open", "pending"] = "open"
    assignee: Name | None = None
    message: FirstMessageIn | None = None


class MessageIn(_In):
    author: Author = "agent"
    text: Text
    external_id: Ref | None = Field(default=None, description="the channel's message id; (channel, id) is unique")
    author_id: Name | None = None

    _blank = field_validator("text")(_not_blank)


class NoteIn(_In):
    text: Text

    _blank = field_validator("text")(_not_blank)


class AssignIn(_In):
    assignee: Name


class ResolveIn(_In):
    resolution: Name | None = None


class StatusIn(_In):
    status: Literal["open", "pending", "resolved"]
    resolution: Name | None = None


class OrderLinkIn(_In):
    order_id: Ref


class CallIn(_Customer):
    call_id: Ref | None = Field(default=None, description="the telephony system's call id; idempotent")
    direction: Literal["inbound", "outbound"] = "inbound"
    duration_seconds: float = Field(ge=0, le=86_400)
    wait_seconds: float | None = Field(default=None, ge=0, le=86_400)
    topic: Name | None = None
    order_ids: list[Ref] = Field(default_factory=list, max_length=20)
    notes: Text | None = None
    resolved: bool = True
    ended_at: datetime | None = Field(
        default=None, description="when the call ended (RFC 3339 with offset); now if absent"
    )

    @field_validator("ended_at")
    @classmethod
    def _aware_past(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            raise ValueError("give a timezone offset (e.g. 2026-11-26T10:00:00Z)")
        v = v.astimezone(UTC)
        now = datetime.now(UTC)
        if v > now + timedelta(minutes=5):
            raise ValueError("must not be in the future")
        if v < now - timedelta(days=365):
            raise ValueError("must be within the last year")
        return v

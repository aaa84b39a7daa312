"""Request and response bodies of the access API."""

from __future__ import annotations

from pydantic import BaseModel, Field

from omnijourney.access.service import SourceInfo


class SourceCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    channel: str
    trusted: bool = False
    allowed_origins: list[str] = Field(default_factory=lambda: ["*"])


class SourceOut(BaseModel):
    id: int
    name: str
    channel: str
    trusted: bool
    write_key: str
    allowed_origins: list[str]
    enabled: bool

    @classmethod
    def of(cls, info: SourceInfo) -> SourceOut:
        return cls(
            id=info.id,
            name=info.name,
            channel=info.channel,
            trusted=info.trusted,
            write_key=info.write_key,
            allowed_origins=list(info.allowed_origins),
            enabled=info.enabled,
        )


class TokenCreate(BaseModel):
    role: str
    name: str = Field(default="", max_length=100)


class TokenOut(BaseModel):
    token: str
    role: str

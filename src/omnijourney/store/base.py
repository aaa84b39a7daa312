"""Declarative base and the column types every domain shares.

Timestamps are stored as naive UTC on every dialect and handed back timezone-aware,
so SQLite and PostgreSQL compare and sort them identically.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out; naive UTC in storage."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; omnijourney stores aware UTC timestamps only")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQL on SQLite
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC)


class Encoded(str):
    """JSON text that is already serialised; the JSON serialiser passes it through untouched.

    The ingestion hot path serialises each message once (it must measure its size anyway)
    and stores exactly those bytes.
    """

    __slots__ = ()


def json_serializer(value: Any) -> str:
    if isinstance(value, Encoded):
        return value
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def json_deserializer(value: str | bytes | int | float) -> Any:
    # SQLite gives a JSON column NUMERIC affinity, so a bare JSON number (a numeric trait)
    # comes back as an int or float rather than text
    if isinstance(value, int | float):
        return value
    return orjson.loads(value)


#: JSON everywhere, JSONB on PostgreSQL so data engineers can index and query it.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")

#: 64-bit ids that are still SQLite rowid aliases (INTEGER PRIMARY KEY).
BigIntId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)

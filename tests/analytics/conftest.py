"""One SparkSession for the whole test session (starting one takes seconds): local[1], one shuffle partition."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="session")
def spark() -> Iterator[Any]:
    from omnijourney.analytics.engine import spark_session

    session = spark_session("local[1]")
    yield session


ENGINES = ["duckdb", pytest.param("spark", marks=pytest.mark.spark)]


@pytest.fixture(params=ENGINES)
def engine_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def spark_or_none(engine_name: str, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("spark") if engine_name == "spark" else None

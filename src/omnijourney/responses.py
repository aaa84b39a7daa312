"""JSON responses encoded once by orjson.

FastAPI's default path walks a returned dict with `jsonable_encoder` and then validates it
against the inferred response model: for a 360 view or a timeline page of nested payloads
that costs more CPU than the database queries. Read routes on hot paths return
`json_response(...)` instead (datetimes become ISO 8601, as before).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response

_OPTIONS = orjson.OPT_NAIVE_UTC | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def json_response(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(body, default=_default, option=_OPTIONS),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )

"""FastAPI dependencies that enforce credentials and roles on the server."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool

from omnijourney.access.service import Principal
from omnijourney.errors import ApiError


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <token>'")
    return token.strip()


async def current_principal(request: Request) -> Principal:
    token = _bearer(request)
    tokens = request.app.state.tokens
    principal = tokens.peek(token)
    if principal is None:
        principal = await run_in_threadpool(tokens.get, token)
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked token")
    return principal


def require_role(*roles: str) -> Callable[..., object]:
    """Allow only these roles (admin is always allowed)."""
    allowed = set(roles) | {"admin"}

    async def check(principal: Principal = Depends(current_principal)) -> Principal:
        if principal.role not in allowed:
            raise ApiError(403, "forbidden", f"role {principal.role!r} may not do this")
        return principal

    return check

"""CORS for the tracking API, as pure ASGI so it costs nothing on the hot path.

The browser SDK posts from the shop's own origin. Every `/v1/` response carries the CORS
headers, errors included: a response without them is treated by the browser as a network
failure and retried, and a preflight that does not allow `X-Retry-Count` blocks every retry.
Preflights carry no write key, so an origin is allowed when any enabled source allows it;
the per-source check happens on the actual request (403 origin_not_allowed).

This middleware sits inside Starlette's ServerErrorMiddleware, whose 500 would go out
without these headers: an unhandled error is answered here instead (then re-raised, so the
server still logs it). When the allowed origins cannot be read (the database is down), the
request's origin is echoed: the response is an error the route raises anyway, and the route's
own per-source check still decides what is accepted; a preflight gets 503 with Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOWED_HEADERS = b"Authorization, Content-Type, Content-Encoding, X-Retry-Count, X-Request-Id"
ALLOWED_METHODS = b"GET, POST, OPTIONS"
_INTERNAL_ERROR = orjson.dumps(
    {"success": False, "code": "internal_error", "message": "the server failed to handle the request; retry later"}
)
_UNAVAILABLE = orjson.dumps(
    {"success": False, "code": "storage_unavailable", "message": "the database is unavailable; retry later"}
)

log = logging.getLogger(__name__)


class TrackingCors:
    def __init__(self, app: ASGIApp, origin_allowed: Callable[[str], bool], prefix: str = "/v1/") -> None:
        self.app = app
        self.origin_allowed = origin_allowed
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        try:
            allowed: bool | None = self.origin_allowed(origin.decode("latin-1"))
        except Exception as exc:  # the allowed origins could not be read: the database is down
            log.warning("CORS: allowed origins unavailable: %s", exc)
            allowed = None
        cors = [(b"vary", b"Origin")]
        if allowed is not False:
            cors += [
                (b"access-control-allow-origin", origin),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-expose-headers", b"Retry-After"),
            ]
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
            if allowed is None:
                await _respond(send, 503, cors + [(b"retry-after", b"5")], _UNAVAILABLE)
                return
            headers = cors
            if allowed:
                headers = cors + [
                    (b"access-control-allow-methods", ALLOWED_METHODS),
                    (b"access-control-allow-headers", ALLOWED_HEADERS),
                    (b"access-control-max-age", b"86400"),
                ]
            await send({"type": "http.response.start", "status": 204 if allowed else 403, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return

        started = False

        async def send_with_cors(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": list(message.get("headers", [])) + cors}
            await send(message)

        try:
            await self.app(scope, receive, send_with_cors)
        except Exception:
            if not started:  # ServerErrorMiddleware sees the response started and only re-raises
                # the server closes the connection after an error it is re-raised to: say so to the client
                await _respond(send, 500, [*cors, (b"connection", b"close")], _INTERNAL_ERROR)
            raise


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None

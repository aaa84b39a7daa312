"""CORS for the tracking API, as pure ASGI so it costs nothing on the hot path.

The browser SDK posts from the shop's own origin. Every `/v1/` response carries the CORS
headers, errors included: a response without them is treated by the browser as a network
failure and retried, and a preflight that does not allow `X-Retry-Count` blocks every retry.
Preflights carry no write key, so an origin is allowed when any enabled source allows it;
the per-source check happens on the actual request (403 origin_not_allowed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

ALLOWED_HEADERS = b"Authorization, Content-Type, Content-Encoding, X-Retry-Count, X-Request-Id"
ALLOWED_METHODS = b"GET, POST, OPTIONS"


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
        allowed = self.origin_allowed(origin.decode("latin-1"))
        cors = [(b"vary", b"Origin")]
        if allowed:
            cors += [
                (b"access-control-allow-origin", origin),
                (b"access-control-allow-credentials", b"true"),
                (b"access-control-expose-headers", b"Retry-After"),
            ]
        if scope["method"] == "OPTIONS" and _header(scope, b"access-control-request-method"):
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

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + cors}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _header(scope: dict[str, Any], name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None

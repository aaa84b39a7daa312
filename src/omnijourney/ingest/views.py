"""The Segment-compatible tracking API (`/v1/...`), public: authenticated by write key only."""

from __future__ import annotations

import asyncio
import base64
import binascii
import zlib
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from omnijourney.access.service import SourceInfo
from omnijourney.errors import ApiError
from omnijourney.ingest import service
from omnijourney.ingest.schemas import ValidMessage, has_nul_escape, parse_time, validate_message
from omnijourney.ingest.spec import SHORT_PATHS
from omnijourney.ingest.writer import Overloaded
from omnijourney.store.base import utcnow

router = APIRouter(prefix="/v1", tags=["tracking"])

_OK = orjson.dumps({"success": True})


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _read_body(raw: bytes, encoding: str | None, limit: int) -> bytes:
    if len(raw) > limit:
        raise ApiError(413, "payload_too_large", f"request body is over the {limit}-byte batch limit")
    if encoding and encoding.lower().strip() == "gzip":
        inflater = zlib.decompressobj(wbits=31)
        try:
            out = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise ApiError(400, "invalid_encoding", f"body is not valid gzip: {exc}") from exc
        if len(out) > limit or inflater.unconsumed_tail:
            raise ApiError(413, "payload_too_large", f"decompressed body is over the {limit}-byte batch limit")
        if not inflater.eof:
            raise ApiError(400, "invalid_encoding", "gzip body is truncated")
        return out
    if encoding and encoding.lower().strip() not in ("identity", ""):
        raise ApiError(415, "unsupported_encoding", f"Content-Encoding {encoding!r} is not supported; use gzip")
    return raw


def _parse(body: bytes) -> Any:
    if not body.strip():
        raise ApiError(400, "invalid_json", "request body is empty")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"request body is not valid UTF-8 JSON: {exc}") from exc


def _write_key(request: Request, body: Any) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "basic" and value:
        try:
            user, _, _password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise ApiError(401, "unauthorized", "malformed Basic authorization header") from exc
        if user:
            return user
    if isinstance(body, dict) and isinstance(body.get("writeKey"), str) and body["writeKey"]:
        return body["writeKey"]
    raise ApiError(401, "unauthorized", "no write key: send it as the Basic auth username or as writeKey")


#: what a database that cannot be reached raises (a connection refused or dropped, a file that cannot be
#: opened, a pool with no connection to give)
DATABASE_UNAVAILABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError)


async def lookup_source(request: Request, write_key: str) -> SourceInfo | None:
    """The source of a write key (cached), None when unknown; 503 + Retry-After when the database is down.

    A 503 tells the SDKs to keep the events and retry; a 500 without CORS headers (what an
    unhandled error gave) reads as a network failure to a browser and as a bug to an operator.
    """
    if "\x00" in write_key:  # no key holds one, and PostgreSQL cannot even be asked about it
        return None
    cache = request.app.state.sources
    hit = cache.peek(write_key)
    if hit is not None:
        return hit[0]
    try:
        return await run_in_threadpool(cache.get, write_key)
    except DATABASE_UNAVAILABLE as exc:
        raise ApiError(
            503, "storage_unavailable", "the database is unavailable; retry later", headers={"Retry-After": "5"}
        ) from exc


async def _source(request: Request, write_key: str) -> SourceInfo:
    info = await lookup_source(request, write_key)
    if info is None or not info.enabled:
        raise ApiError(401, "unauthorized", "unknown or disabled write key")
    origin = request.headers.get("origin")
    if not info.allows_origin(origin):
        raise ApiError(403, "origin_not_allowed", f"origin {origin!r} may not send to this source")
    return info


def _check_overload(request: Request) -> None:
    state = request.app.state
    lag = state.lag_monitor.lag
    if lag > state.settings.limits.max_processing_lag:
        raise ApiError(
            503,
            "processing_lag",
            f"the processing stage is {lag} events behind; retry later",
            headers={"Retry-After": "5"},
        )


async def _ingest(request: Request, default_type: str | None) -> Response:
    state = request.app.state
    limits = state.settings.limits
    _check_overload(request)
    raw_body = _read_body(await request.body(), request.headers.get("content-encoding"), limits.max_batch_bytes)
    body = _parse(raw_body)
    source = await _source(request, _write_key(request, body))
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_request", "request body must be a JSON object")

    received_at = utcnow()
    client_ip = request.client.host if request.client else None
    if default_type is None:
        messages = body.get("batch")
        if not isinstance(messages, list):
            raise ApiError(400, "invalid_request", "a batch request needs a 'batch' array")
        if len(messages) > limits.max_batch_messages:
            raise ApiError(413, "payload_too_large", f"a batch holds at most {limits.max_batch_messages} messages")
        shared_context = body.get("context") if isinstance(body.get("context"), dict) else None
        if shared_context:
            for m in messages:
                if isinstance(m, dict):
                    m["context"] = {**shared_context, **(m.get("context") or {})}
    else:
        body.pop("writeKey", None)
        messages = [body]
    batch_sent_at = parse_time(body.get("sentAt"))
    # JSON can only carry a NUL character as this escape: one search of the request spares every
    # message of the usual request its own
    may_contain_nul = has_nul_escape(raw_body)

    valid: list[ValidMessage] = []
    dead: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    for index, raw in enumerate(messages):
        result = validate_message(
            raw,
            default_type=default_type,
            source_channel=source.channel,
            received_at=received_at,
            batch_sent_at=batch_sent_at,
            client_ip=client_ip,
            limits=limits,
            may_contain_nul=may_contain_nul,
        )
        if isinstance(result, ValidMessage):
            valid.append(result)
        else:
            errors.extend({"index": index, **e.as_dict()} for e in result)
            dead.append(service.dead_letter_row(source_id=source.id, received_at=received_at, raw=raw, errors=result))

    if dead and not valid:
        # nothing usable: a plain 4xx that changes nothing
        raise ApiError(400, "invalid_message", "no message in the request is valid", errors=errors)

    try:
        future = state.writer.submit_messages(source.id, valid, dead)
    except Overloaded as exc:
        raise ApiError(429, "overloaded", str(exc), headers={"Retry-After": "1"}) from exc
    try:
        await asyncio.wrap_future(future)
    except Exception as exc:
        raise ApiError(
            503, "storage_unavailable", "events were not stored; retry", headers={"Retry-After": "1"}
        ) from exc

    if not dead:
        return (
            Response(_OK, media_type="application/json")
            if default_type
            else _json({"success": True, "accepted": len(valid), "rejected": 0})
        )
    return _json({"success": True, "accepted": len(valid), "rejected": len(dead), "errors": errors})


@router.post("/batch")
@router.post("/b")
async def batch(request: Request) -> Response:
    return await _ingest(request, None)


@router.post("/m")
async def sdk_metrics(request: Request) -> Response:
    """The browser SDK's own telemetry: acknowledged and discarded."""
    await request.body()
    return Response(_OK, media_type="application/json")


def _single(kind: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        return await _ingest(request, kind)

    endpoint.__name__ = kind
    return endpoint


for _short, _kind in SHORT_PATHS.items():
    router.add_api_route(f"/{_kind}", _single(_kind), methods=["POST"], name=_kind)
    router.add_api_route(f"/{_short}", _single(_kind), methods=["POST"], name=f"{_kind}_short")


@router.get("/projects/{write_key}/settings")
async def browser_settings(write_key: str, request: Request) -> Response:
    """What the browser SDK (analytics.js / analytics-next) loads before sending anything."""
    info = await lookup_source(request, write_key)
    if info is None or not info.enabled:
        raise ApiError(404, "not_found", "unknown write key")
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return _json(
        {
            "integrations": {
                "Segment.io": {
                    "apiKey": write_key,
                    "apiHost": f"{host}/v1",
                    "protocol": request.url.scheme,
                    "unbundledIntegrations": [],
                    "addBundledMetadata": True,
                    "maybeBundledConfigIds": {},
                    "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]},
                }
            },
            "plan": {
                "track": {"__default": {"enabled": True, "integrations": {}}},
                "identify": {"__default": {"enabled": True}},
                "group": {"__default": {"enabled": True}},
            },
            "edgeFunction": {},
            "analyticsNextEnabled": True,
            "middlewareSettings": {},
            "enabledMiddleware": {},
            "metrics": {"sampleRate": 0.0},
            "legacyVideoPluginsEnabled": False,
            "remotePlugins": [],
        }
    )

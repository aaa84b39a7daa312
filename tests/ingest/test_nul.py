"""A NUL character (U+0000) anywhere in a message: rejected on its own, alike on both backends.

PostgreSQL cannot store U+0000 in text or jsonb; before validation knew that, a message carrying one failed
the whole transaction there (503, retried for ever by the SDKs, the valid messages of its batch lost with it)
while SQLite stored it.
"""

from __future__ import annotations

import base64

import httpx
import orjson
import sqlalchemy as sa

from omnijourney.config import IngestLimits
from omnijourney.ingest.schemas import FieldError, ValidMessage, validate_message
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.conftest import World, count


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def test_validation_names_every_field_holding_a_nul() -> None:
    raw = {
        "type": "identify",
        "userId": "u\x00",
        "traits": {"na\x00me": "x", "tags": ["ok", "b\x00d"]},
        "context": {"page": {"title": "\x00"}},
    }
    result = validate_message(
        raw,
        default_type=None,
        source_channel="web",
        received_at=utcnow(),
        batch_sent_at=None,
        client_ip=None,
        limits=IngestLimits(),
    )
    assert isinstance(result, list)
    assert [e.field for e in result] == ["context.page.title", "traits.na\\u0000me", "traits.tags.1", "userId"]
    assert all("NUL character (\\u0000), which cannot be stored" in e.message for e in result)
    assert all(isinstance(e, FieldError) for e in result)


def test_text_showing_the_escape_itself_is_not_a_nul() -> None:
    raw = {"type": "track", "userId": "u", "event": "E", "properties": {"path": "C:\\u0000"}}
    result = validate_message(
        raw,
        default_type=None,
        source_channel="web",
        received_at=utcnow(),
        batch_sent_at=None,
        client_ip=None,
        limits=IngestLimits(),
    )
    assert isinstance(result, ValidMessage)


def test_single_message_with_a_nul_is_a_400_that_stores_nothing(client: httpx.Client, world: World, engine) -> None:
    body = b'{"userId":"u","event":"E","properties":{"x":"a\\u0000b"}}'
    r = client.post("/v1/track", content=body, headers={**basic(world.web_key), "Origin": "https://shop.example"})
    assert r.status_code == 400, r.text
    assert r.headers["access-control-allow-origin"] == "https://shop.example"
    error = r.json()
    assert error["code"] == "invalid_message"
    assert error["errors"] == [
        {"index": 0, "field": "properties.x", "message": "contains a NUL character (\\u0000), which cannot be stored"}
    ]
    assert count(engine, "events") == 0 and count(engine, "dead_letters") == 0
    # a write key with a NUL is simply unknown (PostgreSQL could not even be asked about it)
    r = client.post("/v1/t", content=b'{"writeKey":"k\\u0000","userId":"u","event":"E"}')
    assert r.status_code == 401, r.text
    assert client.get("/v1/projects/k%00/settings").status_code == 404
    # the server keeps serving
    assert (
        client.post("/v1/track", json={"userId": "u", "event": "ok"}, headers=basic(world.web_key)).status_code == 200
    )


def test_batch_stores_the_valid_messages_and_dead_letters_each_nul(client: httpx.Client, world: World, engine) -> None:
    batch = (
        b'{"batch":['
        b'{"type":"track","userId":"u","event":"ok","messageId":"good"},'
        b'{"type":"track","userId":"u","event":"E\\u0000","messageId":"bad-event"},'
        b'{"type":"track","userId":"u\\u0000","event":"E","messageId":"bad-user"},'
        b'{"type":"identify","userId":"u","traits":{"k\\u0000":1},"messageId":"bad-trait-key"},'
        b'{"type":"page","anonymousId":"a","context":{"locale":"\\u0000"},"messageId":"bad-context"},'
        b'{"type":"track","userId":"u","event":"E","messageId":"bad-\\u0000-id"}'
        b"]}"
    )
    r = client.post("/v1/batch", content=batch, headers=basic(world.web_key))
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["accepted"], out["rejected"]) == (1, 5)
    assert [(e["index"], e["field"]) for e in out["errors"]] == [
        (1, "event"),
        (2, "userId"),
        (3, "traits.k\\u0000"),
        (4, "context.locale"),
        (5, "messageId"),
    ]
    with db.read(engine) as conn:
        assert conn.execute(sa.text("SELECT message_id FROM events")).scalars().all() == ["good"]
        dead = conn.execute(sa.text("SELECT message_id, errors, payload FROM dead_letters ORDER BY id")).all()
    assert [d.message_id for d in dead] == ["bad-event", "bad-user", "bad-trait-key", "bad-context", "bad-\\u0000-id"]
    errors = [d.errors if isinstance(d.errors, list) else orjson.loads(d.errors) for d in dead]
    assert all("NUL character" in e[0]["message"] for e in errors)
    # the payload keeps the message as sent, the NUL escaped
    assert orjson.loads(dead[0].payload)["event"] == "E\x00"

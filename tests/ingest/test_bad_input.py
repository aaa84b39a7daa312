"""Bad input: a clear 4xx JSON error, nothing stored (not even partly), and the server keeps serving."""

from __future__ import annotations

import base64
import gzip

import httpx
import orjson
import pytest

from tests.conftest import World, count


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def _deep(levels: int) -> dict:
    node: dict = {"leaf": 1}
    for _ in range(levels):
        node = {"n": node}
    return node


CASES = {
    "malformed json": (b'{"batch": [', {}, 400, "invalid_json"),
    "empty body": (b"", {}, 400, "invalid_json"),
    "invalid utf-8": (b'{"batch":[{"type":"track","event":"\xff\xfe","userId":"u"}]}', {}, 400, "invalid_json"),
    "not an object": (b"[1,2,3]", {}, 400, "invalid_request"),
    "batch not a list": (b'{"batch": {"type": "track"}}', {}, 400, "invalid_request"),
    "wrong types": (
        orjson.dumps({"batch": [{"type": "track", "event": ["x"], "userId": {"a": 1}}]}),
        {},
        400,
        "invalid_message",
    ),
    "unknown type": (orjson.dumps({"batch": [{"type": "explode", "userId": "u"}]}), {}, 400, "invalid_message"),
    "missing ids": (orjson.dumps({"batch": [{"type": "track", "event": "E"}]}), {}, 400, "invalid_message"),
    "deeply nested properties": (
        orjson.dumps({"batch": [{"type": "track", "event": "E", "userId": "u", "properties": _deep(40)}]}),
        {},
        400,
        "invalid_message",
    ),
    "oversize message": (
        orjson.dumps({"batch": [{"type": "track", "event": "E", "userId": "u", "properties": {"x": "a" * 40_000}}]}),
        {},
        400,
        "invalid_message",
    ),
    "oversize batch": (
        orjson.dumps(
            {
                "batch": [
                    {
                        "type": "track",
                        "event": "E",
                        "userId": "u",
                        "messageId": str(i),
                        "properties": {"x": "a" * 20_000},
                    }
                    for i in range(30)
                ]
            }
        ),
        {},
        413,
        "payload_too_large",
    ),
    "gzip bomb": (gzip.compress(b'{"batch":[' + b" " * 5_000_000 + b"]}"), {"Content-Encoding": "gzip"}, 413, None),
    "broken gzip": (b"\x1f\x8b\x08\x00garbage", {"Content-Encoding": "gzip"}, 400, "invalid_encoding"),
    "unsupported encoding": (b"{}", {"Content-Encoding": "br"}, 415, "unsupported_encoding"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_batch_is_rejected_whole_and_server_keeps_serving(
    case: str, client: httpx.Client, world: World, engine
) -> None:
    body, headers, status, code = CASES[case]
    r = client.post("/v1/batch", content=body, headers={**basic(world.web_key), **headers})
    assert r.status_code == status, r.text
    err = r.json()
    assert err["success"] is False and err["message"]
    if code:
        assert err["code"] == code
    assert count(engine, "events") == 0
    assert count(engine, "dead_letters") == 0
    ok = client.post("/v1/track", json={"userId": "u", "event": "Still here"}, headers=basic(world.web_key))
    assert ok.status_code == 200


def test_error_names_the_field_and_index(client: httpx.Client, world: World) -> None:
    r = client.post(
        "/v1/batch",
        json={"batch": [{"type": "track", "userId": "u"}, {"type": "track", "event": 5, "anonymousId": "a"}]},
        headers=basic(world.web_key),
    )
    assert r.status_code == 400
    errors = r.json()["errors"]
    assert {"index": 0, "field": "event", "message": "a track call needs an event name"} in errors
    assert any(e["index"] == 1 and e["field"] == "event" for e in errors)


def test_single_call_errors(client: httpx.Client, world: World, engine) -> None:
    r = client.post("/v1/track", json={"userId": "u"}, headers=basic(world.web_key))
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "event"
    r = client.post("/v1/alias", json={"userId": "u"}, headers=basic(world.web_key))
    assert r.status_code == 400 and r.json()["errors"][0]["field"] == "previousId"
    r = client.post("/v1/identify", json={"userId": "", "anonymousId": "  "}, headers=basic(world.web_key))
    assert r.status_code == 400
    huge_id = client.post("/v1/identify", json={"userId": "x" * 300}, headers=basic(world.web_key))
    assert huge_id.status_code == 400
    assert count(engine, "events") == 0


def test_too_many_messages_in_a_batch(client: httpx.Client, world: World, engine) -> None:
    batch = {"batch": [{"type": "page", "anonymousId": "a"} for _ in range(2501)]}
    r = client.post("/v1/batch", json=batch, headers=basic(world.web_key))
    assert r.status_code == 413
    assert count(engine, "events") == 0


def test_malformed_basic_auth_is_401(client: httpx.Client, world: World) -> None:
    r = client.post("/v1/track", json={"userId": "u", "event": "E"}, headers={"Authorization": "Basic !!!"})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"


def test_absurd_sent_at_is_a_400_not_a_500(client: httpx.Client, world: World, engine) -> None:
    body = {
        "batch": [{"type": "track", "event": "E", "userId": "u", "timestamp": "0001-01-02T00:00:00Z"}],
        "sentAt": "9999-12-30T00:00:00Z",
    }
    r = client.post("/v1/batch", json=body, headers=basic(world.web_key))
    assert r.status_code == 400, r.text
    assert r.json()["errors"][0]["field"] == "sentAt"
    assert count(engine, "events") == 0

"""The service API over HTTP: the seed example through the ingestion API, staff changes through the outbox,
idempotency and deduplication under concurrent requests, bad input, and roles on every route."""

from __future__ import annotations

import base64
import threading
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.store import db
from tests.conftest import World, count, wait_for
from tests.service import helpers as h

pytestmark = pytest.mark.server

SERVICE_TABLES = ("service_conversations", "service_messages", "service_notes", "service_conversation_orders")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def send(client: httpx.Client, key: str, messages: list[dict[str, Any]]) -> None:
    r = client.post("/v1/batch", json={"batch": messages}, headers=basic(key))
    assert r.status_code == 200 and r.json()["rejected"] == 0, r.text


def settle(client: httpx.Client, world: World) -> None:
    assert wait_for(
        lambda: client.get("/api/pipeline/status", headers=bearer(world.admin_token)).json()["lag"] == 0, timeout=30
    )


def sources(engine: sa.Engine) -> tuple[str, str, str]:
    with db.write(engine) as conn:
        chat = access.create_source(conn=conn, name="chat-tool", channel="chat", trusted=True).write_key
        hotline = access.create_source(conn=conn, name="hotline", channel="call_center", trusted=True).write_key
        staff = access.create_token(conn=conn, role="store_staff", name="praha-1")
    return chat, hotline, staff


def seed(client: httpx.Client, world: World, engine: sa.Engine) -> tuple[int, str]:
    chat_key, hotline_key, staff = sources(engine)
    send(client, world.web_key, h.shop_messages())
    send(client, chat_key, h.chat_messages())
    send(client, hotline_key, h.call_messages())
    settle(client, world)
    r = client.get("/api/profiles/lookup", params={"type": "phone", "value": "+420601123456"}, headers=bearer(staff))
    assert r.status_code == 200, r.text
    return r.json()["id"], staff


def test_seed_example_end_to_end_through_the_ingestion_api(live_server, client, world: World, engine) -> None:
    pid, staff = seed(client, world, engine)
    agent = bearer(world.agent_token)

    r = client.get(f"/api/profiles/{pid}/conversations", headers=bearer(staff))
    assert r.status_code == 200, r.text
    call, chat = r.json()["conversations"]
    assert (call["channel"], chat["channel"]) == ("phone", "chat")
    assert call["measures"]["lost_context"] is True
    assert call["measures"]["previous_conversation_id"] == chat["id"]
    assert chat["measures"]["first_response_seconds"] == h.AGENT_1 - h.CUSTOMER_1
    assert chat["measures"]["handed_off"] is True and chat["measures"]["csat"] == 2
    assert chat["measures"]["resolved_first_contact"] is False and chat["measures"]["contacts"] == 2
    assert call["measures"]["nps"] == 3

    # the hotline agent opens the chat of yesterday: transcript, linked order, the call that followed
    detail = client.get(f"/api/service/conversations/{chat['id']}", headers=agent).json()
    assert [m["external_id"] for m in detail["messages"]] == ["m1", "m2", "m3", "m4", "m5"]
    assert detail["orders"] == [{"order_id": h.ORDER, "order": detail["orders"][0]["order"]}]
    assert detail["orders"][0]["order"]["order_ref"] == h.ORDER
    assert detail["followups"][0]["id"] == call["id"]

    # the agent replies in the call's conversation (a retry with the same key is the same message)
    reply = {"text": "I can see your chat from yesterday; the parcel is re-routed.", "author": "agent"}
    first = client.post(
        f"/api/service/conversations/{call['id']}/messages", json=reply, headers={**agent, "Idempotency-Key": "k-1"}
    )
    assert first.status_code == 201, first.text
    retry = client.post(
        f"/api/service/conversations/{call['id']}/messages", json=reply, headers={**agent, "Idempotency-Key": "k-1"}
    )
    assert retry.status_code == 200 and retry.json()["message_id"] == first.json()["message_id"]
    note = client.post(f"/api/service/conversations/{call['id']}/notes", json={"text": "VIP"}, headers=agent)
    assert note.status_code == 201
    settle(client, world)
    detail = client.get(f"/api/service/conversations/{call['id']}", headers=agent).json()
    assert [m["text"] for m in detail["messages"]] == [reply["text"]]  # applied once, by the API
    assert [n["text"] for n in detail["notes"]][-1] == "VIP"
    # ... and it is on the customer's timeline
    tl = client.get(f"/api/profiles/{pid}/timeline", params={"event": "Message Sent", "limit": 1}, headers=agent)
    assert tl.json()["events"][0]["event_id"] == first.json()["message_id"]

    # a phone call logged from the console, by the customer's phone number; the call id makes it idempotent
    call_in = {
        "identifier": {"type": "phone", "value": "601 123 456"},
        "call_id": "pbx-991",
        "duration_seconds": 95,
        "wait_seconds": 12,
        "topic": "where_is_my_order",
        "order_ids": [h.ORDER],
        "notes": "Confirmed the new address.",
    }
    logged = client.post("/api/service/calls", json=call_in, headers=agent)
    assert logged.status_code == 201, logged.text
    assert client.post("/api/service/calls", json=call_in, headers=agent).json()["id"] == logged.json()["id"]
    logged = logged.json()
    assert logged["channel"] == "phone" and logged["status"] == "resolved" and logged["profile_id"] == pid
    assert logged["measures"]["previous_conversation_id"] == call["id"]
    assert logged["measures"]["lost_context"] is False  # phone after phone: a repeat contact, same channel
    assert logged["measures"]["first_response_seconds"] == 12

    # queue, assignment, status
    r = client.post(f"/api/service/conversations/{chat['id']}/status", json={"status": "open"}, headers=agent)
    assert r.status_code == 200 and r.json()["status"] == "open"
    r = client.post(f"/api/service/conversations/{chat['id']}/assign", json={"assignee": "agent-jan"}, headers=agent)
    assert r.json()["assignee"] == "agent-jan"
    queue = client.get("/api/service/conversations", params={"status": "open", "assignee": "agent-jan"}, headers=agent)
    assert [c["id"] for c in queue.json()["conversations"]] == [chat["id"]]
    r = client.post(f"/api/service/conversations/{chat['id']}/resolve", json={"resolution": "done"}, headers=agent)
    assert r.json()["status"] == "resolved" and r.json()["resolution"] == "done"
    assert (
        client.get("/api/service/conversations", params={"status": "open"}, headers=agent).json()["conversations"] == []
    )
    page = client.get("/api/service/conversations", params={"limit": 2}, headers=agent).json()
    rest = client.get(
        "/api/service/conversations", params={"limit": 2, "before": page["next_before"]}, headers=agent
    ).json()
    assert len(page["conversations"]) == 2 and len(rest["conversations"]) == 1 and rest["next_before"] is None


def test_duplicate_deliveries_store_one_message_also_under_concurrent_requests(
    live_server, client, world: World, engine
) -> None:
    chat_key, _, _ = sources(engine)
    agent = bearer(world.agent_token)
    conv = client.post(
        "/api/service/conversations", json={"channel": "social", "external_id": "wa-thread-1"}, headers=agent
    )
    assert conv.status_code == 201, conv.text
    cid = conv.json()["id"]
    again = client.post(
        "/api/service/conversations", json={"channel": "social", "external_id": "wa-thread-1"}, headers=agent
    )
    assert again.status_code == 200 and again.json()["id"] == cid

    results: list[httpx.Response] = []
    lock = threading.Lock()

    def post(body: dict[str, Any], path: str, headers: dict[str, str]) -> None:
        with httpx.Client(base_url=live_server.url, timeout=60) as c:
            r = c.post(path, json=body, headers=headers)
        with lock:
            results.append(r)

    body = {"author": "customer", "text": "Hello?", "external_id": "wamid.HBgM"}
    threads = [
        threading.Thread(target=post, args=(body, f"/api/service/conversations/{cid}/messages", agent))
        for _ in range(8)
    ]
    threads += [
        threading.Thread(
            target=post,
            args=({"text": "one note"}, f"/api/service/conversations/{cid}/notes", {**agent, "Idempotency-Key": "n"}),
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.status_code for r in results) == [200] * 14 + [201] * 2
    assert len({r.json().get("message_id") for r in results if "message_id" in r.json()}) == 1
    assert count(engine, "service_messages") == 1
    assert count(engine, "service_notes") == 1

    # a chat webhook delivering the same message twice (new envelope id each time) stores it once
    send(client, chat_key, h.chat_messages()[:2])
    send(client, chat_key, [dict(h.chat_messages()[1], messageId="c-1-redelivered")])
    settle(client, world)
    with db.read(engine) as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM service_messages WHERE external_id = 'm1'")).scalar() == 1


def _counts(engine: sa.Engine) -> dict[str, int]:
    return {t: count(engine, t) for t in (*SERVICE_TABLES, "events")}


def test_bad_input_is_refused_with_a_clear_error_and_changes_nothing(live_server, client, world: World, engine) -> None:
    agent = bearer(world.agent_token)
    cid = client.post("/api/service/conversations", json={"channel": "email"}, headers=agent).json()["id"]
    before = _counts(engine)
    bad: list[tuple[str, str, Any, int]] = [
        ("post", "/api/service/conversations", {"channel": "pigeon"}, 422),
        ("post", "/api/service/conversations", {"channel": "chat", "colour": "red"}, 422),
        ("post", "/api/service/conversations", {"channel": "chat", "profile_id": 999999}, 404),
        ("post", "/api/service/conversations", {"channel": "chat", "identifier": {"type": "shoe", "value": "1"}}, 422),
        (
            "post",
            "/api/service/conversations",
            {"channel": "chat", "identifier": {"type": "email", "value": "x@y.cz"}},
            404,
        ),
        (
            "post",
            "/api/service/conversations",
            {"channel": "chat", "profile_id": 1, "identifier": {"type": "email", "value": "a@b.cz"}},
            422,
        ),
        ("post", "/api/service/conversations", {"channel": "chat", "message": {"text": "   "}}, 422),
        ("post", "/api/service/conversations/999999/messages", {"text": "hi"}, 404),
        ("post", f"/api/service/conversations/{cid}/messages", {"text": ""}, 422),
        ("post", f"/api/service/conversations/{cid}/messages", {"text": "x" * 20_001}, 422),
        ("post", f"/api/service/conversations/{cid}/messages", {"text": "hi", "author": "robot"}, 422),
        ("post", f"/api/service/conversations/{cid}/notes", {"text": " "}, 422),
        ("post", f"/api/service/conversations/{cid}/assign", {"assignee": ""}, 422),
        ("post", f"/api/service/conversations/{cid}/status", {"status": "snoozed"}, 422),
        ("post", f"/api/service/conversations/{cid}/orders", {"order_id": ""}, 422),
        ("post", "/api/service/calls", {"duration_seconds": -1}, 422),
        ("post", "/api/service/calls", {"duration_seconds": 5, "ended_at": "2999-01-01T00:00:00Z"}, 422),
        ("post", "/api/service/calls", {"duration_seconds": 5, "ended_at": "2026-11-20T10:00:00"}, 422),
        ("get", "/api/service/conversations?status=snoozed", None, 422),
        ("get", "/api/service/conversations?profile_id=999999", None, 404),
        ("get", "/api/service/conversations/999999", None, 404),
        ("get", "/api/profiles/999999/conversations", None, 404),
    ]
    for method, path, body, status in bad:
        r = client.request(method, path, json=body, headers=agent)
        assert r.status_code == status, (path, body, r.text)
        err = r.json()
        assert err["success"] is False and err["code"] and err["message"], err
    r = client.post(f"/api/service/conversations/{cid}/messages", content=b"{not json", headers=agent)
    assert r.status_code == 422
    assert _counts(engine) == before


WRITES = [
    ("post", "/api/service/conversations", {"channel": "store"}),
    ("post", "/api/service/conversations/{cid}/messages", {"text": "hi"}),
    ("post", "/api/service/conversations/{cid}/notes", {"text": "n"}),
    ("post", "/api/service/conversations/{cid}/assign", {"assignee": "a"}),
    ("post", "/api/service/conversations/{cid}/resolve", {}),
    ("post", "/api/service/conversations/{cid}/status", {"status": "pending"}),
    ("post", "/api/service/conversations/{cid}/orders", {"order_id": "X-1"}),
    ("post", "/api/service/calls", {"duration_seconds": 1}),
]
#: route -> roles allowed (besides admin); None = anyone with a token
READS = {
    "/api/service/conversations": {"agent", "marketer"},
    "/api/service/conversations?profile_id={pid}": {"agent", "marketer", "store_staff"},
    "/api/service/conversations/{cid}": {"agent", "store_staff"},
    "/api/profiles/{pid}/conversations": {"agent", "marketer", "store_staff"},
}


def test_roles_are_enforced_on_every_route(live_server, client, world: World, engine) -> None:
    with db.write(engine) as conn:
        tokens = {
            "admin": world.admin_token,
            "agent": world.agent_token,
            "marketer": world.marketer_token,
            "store_staff": access.create_token(conn=conn, role="store_staff"),
        }
    send(client, world.web_key, h.shop_messages()[:1])
    settle(client, world)
    pid = client.get(
        "/api/profiles/lookup", params={"type": "user_id", "value": "user-jana"}, headers=bearer(world.agent_token)
    ).json()["id"]
    cid = client.post(
        "/api/service/conversations", json={"channel": "chat", "profile_id": pid}, headers=bearer(world.agent_token)
    ).json()["id"]
    for method, path, body in WRITES:
        url = path.format(cid=cid, pid=pid)
        assert client.request(method, url, json=body).status_code == 401
        for role, token in tokens.items():
            r = client.request(method, url, json=body, headers=bearer(token))
            expected = role in ("admin", "agent")
            assert (r.status_code < 300) == expected, (role, url, r.status_code, r.text)
            if not expected:
                assert r.status_code == 403 and r.json()["code"] == "forbidden"
    for path, allowed in READS.items():
        url = path.format(cid=cid, pid=pid)
        assert client.get(url).status_code == 401
        for role, token in tokens.items():
            r = client.get(url, headers=bearer(token))
            assert (r.status_code == 200) == (role == "admin" or role in allowed), (role, url, r.status_code)
            if r.status_code != 200:
                assert r.status_code == 403
    # what a marketer may list carries no transcript or note text
    listing = client.get(f"/api/profiles/{pid}/conversations", headers=bearer(tokens["marketer"])).json()
    assert all("messages" not in c and "notes" not in c and "transcript" not in c for c in listing["conversations"])

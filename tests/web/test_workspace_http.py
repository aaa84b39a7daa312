"""The agent workspace over HTTP: the queue, a conversation beside the 360, reply / note / assign /
resolve / log a call through the service functions (service tables, event log, timeline), CSRF,
roles, double submits, and conversations with their transcripts on the customer 360."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.store import db
from tests.commerce.helpers import bearer
from tests.conftest import LiveServer, World, wait_for
from tests.web.helpers import PHONE, USERS, Shop, build_shop, csrf_of, login, processed

pytestmark = pytest.mark.server

CUSTOMER_TEXT = "Where is my order? It was due yesterday."


@pytest.fixture
def shop(live_server: LiveServer, client: httpx.Client, world: World, engine: sa.Engine) -> Shop:
    return build_shop(client, world, engine)


@pytest.fixture
def chat(shop: Shop, client: httpx.Client, world: World) -> int:
    """An open chat of Jana about her order, with her first message (made through the service API)."""
    r = client.post(
        "/api/service/conversations",
        json={
            "channel": "chat",
            "profile_id": shop.profile_id,
            "topic": "where_is_my_order",
            "subject": "Late delivery",
            "order_ids": [shop.order_ref],
            "message": {"author": "customer", "text": CUSTOMER_TEXT},
        },
        headers=bearer(world.agent_token),
    )
    assert r.status_code == 201, r.text
    return r.json()["id"]


@pytest.fixture
def browser_for(live_server: LiveServer) -> Iterator:
    opened: list[httpx.Client] = []

    def make(role: str) -> httpx.Client:
        c = httpx.Client(base_url=live_server.url, timeout=30, follow_redirects=True)
        opened.append(c)
        r = login(c, USERS[role])
        assert r.status_code == 303, r.text
        return c

    yield make
    for c in opened:
        c.close()


def rows(engine: sa.Engine, sql: str, **params: object) -> list[tuple]:
    with db.read(engine) as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params)]


def messages(engine: sa.Engine, cid: int) -> list[tuple]:
    return rows(
        engine, "SELECT author, author_id, text FROM service_messages WHERE conversation_id = :c ORDER BY id", c=cid
    )


def form_key(html: str, action: str) -> str:
    """The hidden idempotency key of the form posting to `action`."""
    form = html.split(f'action="{action}"')[1].split("</form>")[0]
    m = re.search(r'name="idempotency_key" value="([^"]+)"', form)
    assert m, f"no idempotency key in the form {action}"
    return m.group(1)


def test_agent_queue_lists_open_conversations_oldest_waiting_first_with_badges(
    shop: Shop, chat: int, browser_for, engine
) -> None:
    agent = browser_for("agent")
    page = agent.get("/console/workspace")
    assert page.status_code == 200
    assert f'data-conversation="{chat}"' in page.text and "Late delivery" in page.text
    assert "Jana Nováková" in page.text
    # Jana calls about the same matter and the call stays open: a lost-context repeat contact
    call_form = form_key(page.text, "/console/workspace/calls")
    r = agent.post(
        "/console/workspace/calls",
        data={
            "csrf_token": csrf_of(page.text),
            "idempotency_key": call_form,
            "customer": PHONE,
            "topic": "where_is_my_order",
            "notes": "Calls about the late delivery again",
            "minutes": "0",  # a call started before the chat would make the chat the repeat contact
        },
    )
    assert r.status_code == 200 and "call logged" in r.text
    call = int(re.search(r"/console/workspace/(\d+)\?", str(r.url)).group(1))
    assert "lost context" in r.text and "Calls about the late delivery again" in r.text
    queue = agent.get("/console/workspace").text
    table = queue.split('data-testid="queue"')[1]
    # the chat has waited longer, so it comes first; the call carries the lost-context badge
    assert table.index(f'data-conversation="{chat}"') < table.index(f'data-conversation="{call}"')
    call_row = table.split(f'data-conversation="{call}"')[1].split("</tr>")[0]
    assert "lost context" in call_row and 'class="tag waiting"' in call_row
    assert 'data-testid="queue-count">2 waiting' in queue
    # filters: by channel, mine, unassigned
    phone = agent.get("/console/workspace", params={"channel": "phone"}).text
    assert f'data-conversation="{call}"' in phone and f'data-conversation="{chat}"' not in phone
    # the agent who logged the call took it: it is theirs; the chat is nobody's yet
    mine = agent.get("/console/workspace", params={"show": "mine"}).text
    assert f'data-conversation="{call}"' in mine and f'data-conversation="{chat}"' not in mine
    unassigned = agent.get("/console/workspace", params={"show": "unassigned"}).text
    assert f'data-conversation="{chat}"' in unassigned and f'data-conversation="{call}"' not in unassigned
    token = csrf_of(queue)
    assert "assigned to you" in agent.post(f"/console/workspace/{chat}/assign", data={"csrf_token": token}).text
    mine = agent.get("/console/workspace", params={"show": "mine"}).text
    assert f'data-conversation="{chat}"' in mine and f'data-conversation="{call}"' in mine
    assert 'data-conversation="' not in agent.get("/console/workspace", params={"show": "unassigned"}).text
    assert rows(engine, "SELECT assignee FROM service_conversations WHERE id = :c", c=chat) == [("agnes",)]


def test_opening_a_conversation_shows_transcript_measures_orders_and_the_360_beside_it(
    shop: Shop, chat: int, browser_for
) -> None:
    agent = browser_for("agent")
    r = agent.get(f"/console/workspace/{chat}")
    assert r.status_code == 200
    html = r.text
    transcript = html.split('data-testid="transcript"')[1].split("</ol>")[0]
    assert CUSTOMER_TEXT in transcript and "by-customer" in transcript
    assert 'data-testid="measures"' in html and "First response" in html
    linked = html.split('data-testid="linked-orders"')[1].split("</ul>")[0]
    assert shop.order_ref in linked and "click and collect at store-praha-1" in linked
    beside = html.split('data-testid="customer-360"')[1]
    assert "Jana Nováková" in beside and PHONE in beside and shop.order_ref in beside and "Shoe size" in beside
    assert 'id="timeline"' in beside  # the live timeline of the customer, too
    assert agent.get("/console/workspace/999999").status_code == 404
    assert "script-src 'self'" in r.headers["content-security-policy"]


def test_reply_note_and_resolve_land_in_the_service_tables_and_on_the_timeline(
    shop: Shop, chat: int, browser_for, engine, client, world
) -> None:
    agent = browser_for("agent")
    page = agent.get(f"/console/workspace/{chat}").text
    token = csrf_of(page)
    url = f"/console/workspace/{chat}"
    r = agent.post(
        f"{url}/reply",
        data={"csrf_token": token, "idempotency_key": form_key(page, f"{url}/reply"), "text": "It is with DPD today."},
    )
    assert r.status_code == 200 and "reply sent" in r.text and "It is with DPD today." in r.text
    r = agent.post(
        f"{url}/note",
        data={"csrf_token": token, "idempotency_key": form_key(page, f"{url}/note"), "text": "Offer a voucher."},
    )
    assert "note added" in r.text and "internal note" in r.text
    r = agent.post(f"{url}/resolve", data={"csrf_token": token, "resolution": "answered"})
    assert "resolved" in r.text and 'data-testid="conversation-status">resolved' in r.text
    assert messages(engine, chat) == [
        ("customer", None, CUSTOMER_TEXT),
        ("agent", "agnes", "It is with DPD today."),
    ]
    assert rows(engine, "SELECT author_id, text FROM service_notes WHERE conversation_id = :c", c=chat) == [
        ("agnes", "Offer a voucher.")
    ]
    assert rows(engine, "SELECT status, resolution FROM service_conversations WHERE id = :c", c=chat) == [
        ("resolved", "answered")
    ]
    # each change is an event in the log (the outbox) ...
    kinds = rows(engine, "SELECT kind FROM service_outbox WHERE conversation_id = :c ORDER BY event_id", c=chat)
    assert [k for (k,) in kinds] == ["conversation", "message", "message", "note", "status-resolved"]
    # ... and so on the customer's timeline once processed
    assert wait_for(lambda: processed(client, world), timeout=20)
    timeline = agent.get(f"/console/customers/{shop.profile_id}").text.split('data-testid="timeline"')[1]
    assert "It is with DPD today." in timeline and "Conversation Resolved" in timeline
    assert "Conversation Note Added" in timeline
    # resolved conversations leave the queue
    assert f'data-conversation="{chat}"' not in agent.get("/console/workspace").text
    # resolving again changes nothing
    again = agent.post(f"{url}/resolve", data={"csrf_token": token})
    assert "already resolved" in again.text
    assert len(rows(engine, "SELECT kind FROM service_outbox WHERE conversation_id = :c", c=chat)) == 5


def test_a_double_submit_with_the_same_key_stores_one_message_note_and_call(
    shop: Shop, chat: int, browser_for, engine
) -> None:
    agent = browser_for("agent")
    page = agent.get(f"/console/workspace/{chat}").text
    token = csrf_of(page)
    url = f"/console/workspace/{chat}"
    reply = {"csrf_token": token, "idempotency_key": form_key(page, f"{url}/reply"), "text": "On its way."}
    assert "reply sent" in agent.post(f"{url}/reply", data=reply).text
    assert "already sent" in agent.post(f"{url}/reply", data=reply).text
    note = {"csrf_token": token, "idempotency_key": form_key(page, f"{url}/note"), "text": "Checked DPD."}
    agent.post(f"{url}/note", data=note)
    agent.post(f"{url}/note", data=note)
    call = {
        "csrf_token": token,
        "idempotency_key": form_key(page, "/console/workspace/calls"),
        "profile_id": str(shop.profile_id),
        "notes": "Called back",
        "minutes": "2",
        "resolved": "true",
    }
    first = agent.post("/console/workspace/calls", data=call)
    second = agent.post("/console/workspace/calls", data=call)
    assert "call logged" in first.text and "already logged" in second.text
    assert first.url.path == second.url.path
    assert messages(engine, chat) == [("customer", None, CUSTOMER_TEXT), ("agent", "agnes", "On its way.")]
    assert rows(engine, "SELECT count(*) FROM service_notes WHERE conversation_id = :c", c=chat) == [(1,)]
    assert rows(engine, "SELECT count(*) FROM service_conversations WHERE channel = 'phone'") == [(1,)]
    # a newly rendered form has a new key: the same text sent again is a new message
    fresh = agent.get(url).text
    agent.post(f"{url}/reply", data={**reply, "idempotency_key": form_key(fresh, f"{url}/reply")})
    assert len(messages(engine, chat)) == 3
    # the key is scoped to the user: another agent reusing it makes their own message
    with db.write(engine) as conn:
        from omnijourney.store.base import utcnow
        from omnijourney.web import service

        service.create_user(conn=conn, username="otto", role="agent", password="x" * 12, now=utcnow())
    otto = httpx.Client(base_url=agent.base_url, follow_redirects=True)
    try:
        assert login(otto, "otto", "x" * 12).status_code == 303
        otto_token = csrf_of(otto.get(url).text)
        assert "reply sent" in otto.post(f"{url}/reply", data={**reply, "csrf_token": otto_token}).text
    finally:
        otto.close()
    assert messages(engine, chat)[-1] == ("agent", "otto", "On its way.")


def test_without_a_valid_csrf_token_nothing_changes(shop: Shop, chat: int, browser_for, engine) -> None:
    agent = browser_for("agent")
    page = agent.get(f"/console/workspace/{chat}").text
    token = csrf_of(page)
    url = f"/console/workspace/{chat}"
    before = rows(engine, "SELECT count(*) FROM events")
    for path, data in (
        ("/reply", {"text": "forged", "idempotency_key": "k1"}),
        ("/note", {"text": "forged", "idempotency_key": "k2"}),
        ("/assign", {}),
        ("/resolve", {}),
    ):
        assert agent.post(url + path, data=data).status_code == 403
        assert agent.post(url + path, data={**data, "csrf_token": "wrong"}).status_code == 403
        evil = agent.post(url + path, data={**data, "csrf_token": token}, headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403
    r = agent.post("/console/workspace/calls", data={"profile_id": str(shop.profile_id), "notes": "forged"})
    assert r.status_code == 403
    assert messages(engine, chat) == [("customer", None, CUSTOMER_TEXT)]
    assert rows(engine, "SELECT count(*) FROM service_notes") == [(0,)]
    assert rows(engine, "SELECT status, assignee FROM service_conversations") == [("open", None)]
    assert rows(engine, "SELECT count(*) FROM events") == before


@pytest.mark.parametrize("role", ["store_staff", "marketer"])
def test_store_staff_and_marketers_cannot_use_the_workspace(
    role: str, shop: Shop, chat: int, browser_for, engine
) -> None:
    c = browser_for(role)
    token = csrf_of(c.get("/console/search").text)
    assert c.get("/console/workspace").status_code == 403
    assert c.get(f"/console/workspace/{chat}").status_code == 403
    url = f"/console/workspace/{chat}"
    assert c.post(f"{url}/reply", data={"csrf_token": token, "text": "hi", "idempotency_key": "a"}).status_code == 403
    assert c.post(f"{url}/note", data={"csrf_token": token, "text": "hi", "idempotency_key": "b"}).status_code == 403
    assert c.post(f"{url}/assign", data={"csrf_token": token}).status_code == 403
    assert c.post(f"{url}/resolve", data={"csrf_token": token}).status_code == 403
    call = {"csrf_token": token, "profile_id": str(shop.profile_id), "notes": "x", "idempotency_key": "c"}
    assert c.post("/console/workspace/calls", data=call).status_code == 403
    assert messages(engine, chat) == [("customer", None, CUSTOMER_TEXT)]
    assert rows(engine, "SELECT status, assignee FROM service_conversations") == [("open", None)]
    assert rows(engine, "SELECT count(*) FROM service_notes") == [(0,)]
    assert "/console/workspace" not in c.get("/console/search").text  # no link either


def test_bad_input_is_refused_with_a_message_and_changes_nothing(shop: Shop, chat: int, browser_for, engine) -> None:
    agent = browser_for("agent")
    token = csrf_of(agent.get("/console/workspace").text)
    r = agent.post(f"/console/workspace/{chat}/reply", data={"csrf_token": token, "text": "   "})
    assert "the reply is empty" in r.text
    r = agent.post("/console/workspace/calls", data={"csrf_token": token, "customer": "nobody@nowhere.example"})
    assert "no customer matches" in r.text
    r = agent.post("/console/workspace/calls", data={"csrf_token": token, "customer": PHONE, "minutes": "ten"})
    assert "number of minutes" in r.text
    r = agent.post("/console/workspace/999999/reply", data={"csrf_token": token, "text": "hi"})
    assert "no conversation 999999" in r.text
    assert messages(engine, chat) == [("customer", None, CUSTOMER_TEXT)]
    assert rows(engine, "SELECT count(*) FROM service_conversations") == [(1,)]


def test_customer_360_lists_conversations_expandable_to_their_transcript(
    shop: Shop, chat: int, browser_for, engine
) -> None:
    agent = browser_for("agent")
    page = agent.get(f"/console/customers/{shop.profile_id}").text
    section = page.split('aria-labelledby="convs"')[1].split("</section>")[0]
    item = section.split(f'data-conversation="{chat}"')[1]
    assert "<details>" in item and "<summary>" in item and "Late delivery" in item and CUSTOMER_TEXT in item
    # log a call from the 360 page: it comes back to the page with the new phone conversation
    r = agent.post(
        "/console/workspace/calls",
        data={
            "csrf_token": csrf_of(page),
            "idempotency_key": form_key(page, "/console/workspace/calls"),
            "profile_id": str(shop.profile_id),
            "back": "customer",
            "notes": "Wants the parcel sent to the store instead",
            "topic": "delivery",
            "minutes": "3.5",
            "order_id": shop.order_ref,
        },
    )
    assert r.status_code == 200 and str(r.url).split("?")[0].endswith(f"/console/customers/{shop.profile_id}")
    assert "call logged" in r.text
    call = rows(
        engine,
        "SELECT id, status, attributes FROM service_conversations WHERE channel = 'phone'",
    )
    assert len(call) == 1 and call[0][1] == "open"  # not ticked as resolved: stays in the queue
    section = r.text.split('aria-labelledby="convs"')[1].split("</section>")[0]
    assert f'data-conversation="{call[0][0]}"' in section and "Wants the parcel sent to the store instead" in section
    assert rows(
        engine, "SELECT order_ref FROM service_conversation_orders WHERE conversation_id = :c", c=call[0][0]
    ) == [(shop.order_ref,)]
    # store staff read transcripts too; marketers see the list and measures, never a transcript or note
    staff = browser_for("store_staff").get(f"/console/customers/{shop.profile_id}").text
    assert CUSTOMER_TEXT in staff and "Log a phone call" not in staff
    marketer = browser_for("marketer").get(f"/console/customers/{shop.profile_id}").text
    section = marketer.split('aria-labelledby="convs"')[1].split("</section>")[0]
    assert "Late delivery" in section and CUSTOMER_TEXT not in section
    assert "Wants the parcel sent to the store instead" not in section and "Log a phone call" not in section


def test_concurrent_submits_of_the_same_reply_store_one_message(shop: Shop, chat: int, browser_for, engine) -> None:
    agent = browser_for("agent")
    page = agent.get(f"/console/workspace/{chat}").text
    url = f"/console/workspace/{chat}/reply"
    form = {"csrf_token": csrf_of(page), "idempotency_key": form_key(page, url), "text": "Only once, please."}
    barrier = threading.Barrier(4)
    statuses: list[int] = []

    def submit() -> None:
        with httpx.Client(base_url=agent.base_url, cookies=agent.cookies, timeout=30) as c:
            barrier.wait()
            statuses.append(c.post(url, data=form).status_code)

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [303] * 4
    assert messages(engine, chat) == [("customer", None, CUSTOMER_TEXT), ("agent", "agnes", "Only once, please.")]
    assert rows(engine, "SELECT count(*) FROM service_outbox WHERE kind = 'message'") == [(2,)]

"""The console in a real browser: headless Chromium (Debian's, driven by Playwright) against a live server
loaded by the demo (`run_demo`, through the HTTP API), on SQLite. Screenshots go to test-artifacts/console/."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.web.conftest import Demo, log_in, shot

pytestmark = [pytest.mark.browser, pytest.mark.server, pytest.mark.slow]


def test_agent_finds_the_customer_by_loyalty_card_and_sees_new_events_live(page: Any, demo: Demo) -> None:
    hero = demo.hero
    log_in(page, demo, "agent")
    search = page.get_by_label("E-mail, phone, loyalty card, name or order number")
    # by loyalty card first
    search.fill(hero.loyalty_card)
    page.get_by_role("button", name="Search").click()
    page.locator("[data-testid=results]").get_by_role("link", name=hero.name).wait_for()
    shot(page, "01-search-by-loyalty-card")
    # then by phone, typed as a person says it ("+420 777 123 456")
    national = hero.phone.removeprefix("+420")
    search.fill(f"+420 {national[:3]} {national[3:6]} {national[6:]}")
    page.get_by_role("button", name="Search").click()
    results = page.locator("[data-testid=results]")
    results.wait_for()
    shot(page, "01b-search-by-phone")
    results.get_by_role("link", name=hero.name).click()
    page.wait_for_selector("[data-testid=customer-name]")
    assert page.locator("[data-testid=customer-name]").inner_text() == hero.name
    identifiers = page.locator("[data-testid=identifiers]").inner_text()
    assert hero.loyalty_card in identifiers and hero.phone in identifiers  # the phone is linked too
    orders = page.locator("[data-testid=orders]").inner_text()
    assert "click and collect at store-praha-1" in orders  # today's order, waiting at Praha
    assert page.locator("[data-testid=suggestions] li").count() >= 1
    assert page.locator("#timeline li.event").count() >= 10
    # yesterday's chat is listed and its transcript expands in place
    yesterday = f"{demo.anchor - timedelta(days=1):%Y-%m-%d}"
    chat = page.locator("[data-testid=conversations] > li", has_text="product setup").filter(has_text=yesterday)
    assert chat.count() == 1
    transcript = chat.locator("[data-testid=transcript]")
    assert not transcript.is_visible()
    chat.locator("summary").click()
    transcript.wait_for(state="visible")
    text = transcript.inner_text()
    assert "Forerunner 265" in text and "Přidat zařízení" in text  # her question and the agent's answer
    page.wait_for_selector("[data-live-status]:has-text('live')")
    shot(page, "02-customer-360")

    # a new event through the ingestion API appears without a reload
    page.evaluate("window.__notReloaded = true")
    pos = demo.credentials["sources"]["pos"]["write_key"]
    r = httpx.post(
        f"{demo.url}/v1/track",
        auth=(pos, ""),
        json={
            "userId": hero.user_id,
            "event": "Store Visited",
            "properties": {"store_id": "store-praha-1", "name": "came for the live-test pickup"},
        },
    )
    assert r.status_code == 200, r.text
    fresh = page.locator("#timeline li.event.new", has_text="came for the live-test pickup")
    fresh.wait_for()
    assert page.evaluate("window.__notReloaded") is True
    assert page.locator("#timeline li.event").first.get_attribute("data-event-id") == fresh.get_attribute(
        "data-event-id"
    )
    shot(page, "03-live-event")


def test_store_staff_mark_the_pickup_ready_then_picked_up(page: Any, demo: Demo) -> None:
    hero = demo.hero
    log_in(page, demo, "store.praha")
    assert page.url.endswith("/console/store")
    row = page.locator("[data-testid=pickups] tr", has_text=hero.name)
    row.wait_for()
    ref = row.get_attribute("data-order")
    shot(page, "04-store-pickups")
    row.get_by_role("button", name="Mark ready").click()
    page.get_by_role("status").filter(has_text=f"order {ref} is ready for pickup").wait_for()
    assert page.locator(f"[data-testid=pickups-due] tr[data-order='{ref}']").count() == 1  # ready: due today
    page.locator(f"tr[data-order='{ref}']").get_by_role("button", name="Picked up").click()
    page.get_by_role("status").filter(has_text=f"order {ref} is picked up").wait_for()
    assert page.locator(f"tr[data-order='{ref}']").count() == 0
    shot(page, "05-picked-up")
    token = demo.credentials["tokens"]["admin"]
    order = httpx.get(f"{demo.url}/api/commerce/orders/{ref}", headers={"Authorization": f"Bearer {token}"}).json()
    assert [h["status"] for h in order["history"]] == ["placed", "ready_for_pickup", "picked_up"]

    # find the customer by card: preferences and suggestions
    page.get_by_label("Loyalty card or phone").fill(hero.loyalty_card)
    page.get_by_role("button", name="Find").click()
    card = page.locator("[data-testid=store-customer]")
    card.wait_for()
    assert hero.name in card.inner_text() and "Favourite store" in card.inner_text()


def test_a_marketer_cannot_open_the_admin_page(page: Any, demo: Demo) -> None:
    log_in(page, demo, "marketer")
    assert page.get_by_role("link", name="Admin").count() == 0
    response = page.goto("/console/admin")
    assert response.status == 403
    assert "Not allowed" in page.locator("h1").inner_text()
    shot(page, "06-marketer-denied-admin")
    # the admin can
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/console/login")
    log_in(page, demo, "admin")
    assert page.goto("/console/admin").status == 200
    assert page.locator("[data-testid=users]").inner_text().count("store") >= 1


def test_agent_works_a_conversation_beside_the_customer_360(page: Any, demo: Demo) -> None:
    """The agent workspace: the queue, a conversation with the 360 beside it, a reply, the resolution."""
    hero = demo.hero
    agent = {"Authorization": f"Bearer {demo.credentials['tokens']['agent']}"}
    found = httpx.get(
        f"{demo.url}/api/profiles/lookup", params={"type": "loyalty_card", "value": hero.loyalty_card}, headers=agent
    )
    assert found.status_code == 200, found.text
    made = httpx.post(
        f"{demo.url}/api/service/conversations",
        json={
            "channel": "chat",
            "profile_id": found.json()["id"],
            "subject": "Browser test: is my pickup ready?",
            "topic": "pickup_question",
            "message": {"author": "customer", "text": "Hello, can I pick up my order today after work?"},
        },
        headers=agent,
    )
    assert made.status_code == 201, made.text
    conversation = made.json()["id"]

    log_in(page, demo, "agent")
    page.get_by_role("link", name="Workspace").click()
    row = page.locator(f"[data-testid=queue] tr[data-conversation='{conversation}']")
    row.wait_for()
    assert hero.name in row.inner_text()
    shot(page, "07-workspace-queue")
    row.get_by_role("link", name="Browser test: is my pickup ready?").click()
    page.wait_for_selector("[data-testid=conversation-title]")
    assert "can I pick up my order today" in page.locator("[data-testid=transcript]").inner_text()
    beside = page.locator("[data-testid=customer-360]")
    assert hero.name in beside.locator("[data-testid=customer-name]").inner_text()
    assert "store-praha-1" in beside.locator("[data-testid=orders]").inner_text()
    assert beside.locator("#timeline li.event").count() >= 5
    shot(page, "08-workspace-conversation")

    page.get_by_label("Message to the customer").fill("Yes, it is waiting for you at Praha until 20:00.")
    page.get_by_role("button", name="Send reply").click()
    page.get_by_role("status").filter(has_text="reply sent").wait_for()
    assert "waiting for you at Praha" in page.locator("[data-testid=transcript]").inner_text()
    page.get_by_label("Resolution").fill("answered")
    page.get_by_role("button", name="Resolve").click()
    page.get_by_role("status").filter(has_text="resolved").wait_for()
    assert page.locator("[data-testid=conversation-status]").inner_text() == "resolved"
    shot(page, "09-workspace-resolved")
    page.get_by_role("link", name="← Queue").click()
    page.wait_for_selector("[data-testid=queue-count]")
    assert page.locator(f"tr[data-conversation='{conversation}']").count() == 0
    detail = httpx.get(f"{demo.url}/api/service/conversations/{conversation}", headers=agent).json()
    assert detail["status"] == "resolved" and detail["messages"][-1]["author_id"] == "agent"

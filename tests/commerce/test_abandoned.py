"""The abandoned-cart signal: last change and value of the active cart, on the profile and queryable."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from segment.analytics.client import Client as SegmentClient

from omnijourney.commerce import service
from omnijourney.store import db
from omnijourney.store.base import utcnow
from tests.commerce.helpers import bearer, setup_catalog
from tests.conftest import World, wait_for

pytestmark = pytest.mark.server


def test_abandoned_carts_on_the_profile_and_for_segments(live_server, client, world: World, engine) -> None:
    setup_catalog(client, world.admin_token)
    auth = bearer(world.agent_token)
    marketer = bearer(world.marketer_token)
    web = SegmentClient(world.web_key, host=live_server.url, sync_mode=True)
    web.identify("user-ida", {"email": "ida@example.com"}, anonymous_id="anon-ida")
    carts = {}
    for anon, items in (("anon-ida", {"SHOE-42": 1, "SOCK-1": 2}), ("anon-x", {"SOCK-1": 1}), ("anon-new", {})):
        cart = client.post("/api/commerce/carts", json={"anonymous_id": anon}, headers=auth).json()
        for sku, q in items.items():
            r = client.post(f"/api/commerce/carts/{cart['id']}/items", json={"sku": sku, "quantity": q}, headers=auth)
            assert r.status_code == 200, r.text
        carts[anon] = cart["id"]
    with db.write(engine) as conn:  # two hours pass for the first two carts
        conn.execute(
            sa.update(service.CARTS)
            .where(service.CARTS.c.id.in_([carts["anon-ida"], carts["anon-x"]]))
            .values(updated_at=utcnow() - timedelta(hours=2))
        )
    assert wait_for(
        lambda: client.get("/api/pipeline/status", headers=bearer(world.admin_token)).json()["lag"] == 0, timeout=20
    )
    pid = client.get("/api/profiles/lookup", params={"type": "user_id", "value": "user-ida"}, headers=marketer).json()[
        "id"
    ]

    r = client.get("/api/commerce/carts/abandoned", params={"idle_minutes": 60}, headers=marketer)
    assert r.status_code == 200, r.text
    found = {c["cart_id"]: c for c in r.json()["carts"]}
    assert set(found) == {carts["anon-ida"], carts["anon-x"]}  # the empty cart and fresh carts are not abandoned
    ida = found[carts["anon-ida"]]
    assert (ida["profile_id"], ida["value"], ida["currency"], ida["item_count"]) == (pid, "2880.00", "CZK", 3)
    assert 110 <= ida["idle_minutes"] <= 130
    anon_x = found[carts["anon-x"]]
    assert anon_x["anonymous_id"] == "anon-x" and anon_x["value"] == "195.00"
    assert anon_x["profile_id"] is not None and anon_x["profile_id"] != pid  # the visitor's own profile
    r = client.get(
        "/api/commerce/carts/abandoned",
        params={"idle_minutes": 60, "min_value": "1000", "currency": "czk"},
        headers=marketer,
    )
    assert [c["cart_id"] for c in r.json()["carts"]] == [carts["anon-ida"]]
    r = client.get("/api/commerce/carts/abandoned", params={"idle_minutes": 180}, headers=marketer)
    assert r.json()["carts"] == []
    page = client.get("/api/commerce/carts/abandoned", params={"idle_minutes": 60, "limit": 1}, headers=marketer).json()
    rest = client.get(
        "/api/commerce/carts/abandoned", params={"idle_minutes": 60, "after": page["next_after"]}, headers=marketer
    ).json()
    assert [c["cart_id"] for c in page["carts"] + rest["carts"]] == sorted(found, reverse=True)

    # on the profile (360): the active cart's last change, value and items
    profile = client.get(f"/api/profiles/{pid}", headers=marketer).json()
    signal = profile["computed"]["active_cart"]
    assert (signal["cart_id"], signal["value"], signal["item_count"]) == (carts["anon-ida"], "2880.00", 3)
    assert signal["idle_minutes"] >= 110

    for params, code in (
        ({"idle_minutes": 0}, "invalid_request"),
        ({"currency": "XYZ"}, "invalid_currency"),
        ({"min_value": "10"}, "invalid_request"),
        ({"min_value": "10.001", "currency": "CZK"}, "invalid_request"),
        ({"idle_minutes": 60, "max_idle_minutes": 30}, "invalid_request"),
    ):
        r = client.get("/api/commerce/carts/abandoned", params=params, headers=marketer)
        assert r.status_code == 422 and r.json()["code"] == code, (params, r.text)
    assert client.get("/api/commerce/carts/abandoned").status_code == 401

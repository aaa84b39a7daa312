"""The demo's engage step, through the API: train recommendations, create the demo segments and
refresh them, show a sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

#: the demo's segments, created through the API (engage.yaml ships none)
DEMO_SEGMENTS: list[dict[str, Any]] = [
    {
        "key": "cart_abandoners",
        "name": "Abandoned cart (idle 1 h+, 500+)",
        "rule": {"cart": {"idle_minutes_gte": 60, "value_gte": 500}},
    },
    {
        "key": "repeat_buyers",
        "name": "Repeat buyers",
        "rule": {"computed": {"field": "order_count", "op": "gte", "value": 2}},
    },
    {
        "key": "high_value_email_ok",
        "name": "High value, e-mail marketing not withdrawn",
        "rule": {
            "all": [
                {"computed": {"field": "lifetime_revenue", "op": "gte", "value": 5000}},
                {"not": {"consent": {"purpose": "marketing", "channel": "email", "status": "withdrawn"}}},
            ]
        },
    },
    {
        "key": "lapsing_buyers",
        "name": "Bought before, not in the last 60 days",
        "rule": {
            "all": [
                {"event": {"name": "Order Completed"}},
                {"event": {"name": "Order Completed", "did": False, "within_days": 60}},
            ]
        },
    },
    {
        "key": "browsers_not_buyers",
        "name": "Viewed 5+ products in 30 days, no order in 30 days",
        "rule": {
            "all": [
                {"event": {"name": "Product Viewed", "within_days": 30, "count": {"op": "gte", "value": 5}}},
                {"event": {"name": "Order Completed", "did": False, "within_days": 30}},
            ]
        },
    },
    {
        "key": "runners_email_ok",
        "name": "Viewed products in 90 days, e-mail not withdrawn",
        "rule": {
            "all": [
                {"event": {"name": "Product Viewed", "within_days": 90}},
                {"not": {"consent": {"purpose": "marketing", "channel": "email", "status": "withdrawn"}}},
            ]
        },
    },
]


class DemoEngageError(RuntimeError):
    pass


@dataclass
class EngageSummary:
    model: dict[str, Any] = field(default_factory=dict)
    segments: list[dict[str, Any]] = field(default_factory=list)
    sample_profile: int | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)
    #: a repeat buyer whose e-mail leads with a consumable they restock ("buy again")
    restocker: int | None = None
    restock: list[dict[str, Any]] = field(default_factory=list)


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 300:
        raise DemoEngageError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    return r.json()


def run(client: httpx.Client, admin: str) -> EngageSummary:
    auth = {"Authorization": f"Bearer {admin}"}
    out = EngageSummary()
    out.model = _ok(client.post("/api/recommendations/train", headers=auth))
    existing = {s["key"] for s in _ok(client.get("/api/segments", headers=auth))["segments"]}
    for seg in DEMO_SEGMENTS:  # each is evaluated for everyone when created
        if seg["key"] not in existing:
            _ok(client.post("/api/segments", json=seg, headers=auth))
    _ok(client.post("/api/segments/refresh", headers=auth))
    out.segments = _ok(client.get("/api/segments", headers=auth))["segments"]
    buyers = next((s for s in out.segments if s["key"] == "repeat_buyers"), None)
    if buyers and buyers["count"]:
        members = _ok(client.get("/api/segments/repeat_buyers/members", params={"limit": 40}, headers=auth))["items"]
        for n, member in enumerate(members):
            pid = member["profile_id"]
            items = _ok(
                client.get(
                    f"/api/profiles/{pid}/recommendations", params={"context": "email", "limit": 5}, headers=auth
                )
            )["items"]
            if n == 0:
                out.sample_profile, out.sample = pid, items
            if items and items[0]["reason"]["kind"] == "buy_again":
                out.restocker, out.restock = pid, items
                break
    return out


def describe(s: EngageSummary) -> str:
    lines = [
        f"recommendations: model over {s.model.get('items', 0)} items and {s.model.get('profiles', 0)} profiles; "
        f"segments: " + ", ".join(f"{x['key']} ({x['count']})" for x in s.segments)
    ]
    if s.sample_profile is not None:
        picks = "; ".join(f"{i['name']} — {i['reason']['text']}" for i in s.sample)
        lines.append(f"e-mail recommendations for profile {s.sample_profile}: {picks or 'none'}")
    if s.restocker is not None:
        picks = "; ".join(f"{i['name']} — {i['reason']['text']}" for i in s.restock)
        lines.append(f"buy again (a restocking customer, profile {s.restocker}): {picks}")
    return "\n".join(lines)

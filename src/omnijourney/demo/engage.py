"""The demo's engage step, through the API: train recommendations, refresh the segments (the
configuration segments of engage.yaml plus one created through the API), show a sample."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

DEMO_SEGMENT = {
    "key": "demo_runners_email_ok",
    "name": "Runners who may be e-mailed",
    "description": "Viewed running shoes in the last 90 days; e-mail marketing not withdrawn.",
    "rule": {
        "all": [
            {"event": {"name": "Product Viewed", "within_days": 90}},
            {"not": {"consent": {"purpose": "marketing", "channel": "email", "status": "withdrawn"}}},
        ]
    },
}


class DemoEngageError(RuntimeError):
    pass


@dataclass
class EngageSummary:
    model: dict[str, Any] = field(default_factory=dict)
    segments: list[dict[str, Any]] = field(default_factory=list)
    sample_profile: int | None = None
    sample: list[dict[str, Any]] = field(default_factory=list)


def _ok(r: httpx.Response) -> Any:
    if r.status_code >= 300:
        raise DemoEngageError(f"{r.request.method} {r.request.url.path}: {r.status_code} {r.text[:300]}")
    return r.json()


def run(client: httpx.Client, admin: str) -> EngageSummary:
    auth = {"Authorization": f"Bearer {admin}"}
    out = EngageSummary()
    out.model = _ok(client.post("/api/recommendations/train", headers=auth))
    existing = _ok(client.get("/api/segments", headers=auth))["segments"]
    if not any(s["key"] == DEMO_SEGMENT["key"] for s in existing):
        _ok(client.post("/api/segments", json=DEMO_SEGMENT, headers=auth))
    _ok(client.post("/api/segments/refresh", headers=auth))
    out.segments = _ok(client.get("/api/segments", headers=auth))["segments"]
    buyers = next((s for s in out.segments if s["key"] == "repeat_buyers"), None)
    if buyers and buyers["count"]:
        first = _ok(client.get("/api/segments/repeat_buyers/members", params={"limit": 1}, headers=auth))["items"]
        if first:
            out.sample_profile = first[0]["profile_id"]
            out.sample = _ok(
                client.get(
                    f"/api/profiles/{out.sample_profile}/recommendations",
                    params={"context": "email", "limit": 5},
                    headers=auth,
                )
            )["items"]
    return out


def describe(s: EngageSummary) -> str:
    lines = [
        f"recommendations: model over {s.model.get('items', 0)} items and {s.model.get('profiles', 0)} profiles; "
        f"segments: " + ", ".join(f"{x['key']} ({x['count']})" for x in s.segments)
    ]
    if s.sample_profile is not None:
        picks = "; ".join(f"{i['name']} — {i['reason']['text']}" for i in s.sample)
        lines.append(f"e-mail recommendations for profile {s.sample_profile}: {picks or 'none'}")
    return "\n".join(lines)

"""`omnijourney demo` leaves conversations behind: chats with their transcripts and CSAT, calls the next day
flagged as lost context, all on the customers' profiles."""

from __future__ import annotations

import io
from dataclasses import replace
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from rich.console import Console

from omnijourney.config import Settings
from omnijourney.demo import runner
from omnijourney.service import service
from omnijourney.store import db
from tests.conftest import free_port

pytestmark = [pytest.mark.server, pytest.mark.slow]


def test_demo_world_gives_conversations_with_measures_and_lost_context(settings: Settings, engine) -> None:
    out = io.StringIO()
    runner.run_demo(
        settings=replace(settings, port=free_port()),
        customers=60,
        seed=11,
        serve_after=False,
        console=Console(file=out, width=160),
        anchor=datetime(2025, 6, 1, tzinfo=UTC),
    )
    with db.read(engine) as conn:
        o = service.overview(conn=conn)
        chats = conn.execute(
            sa.text("SELECT count(*) FROM service_conversations WHERE channel = 'chat' AND message_count = 5")
        ).scalar_one()
        orphans = conn.execute(
            sa.text("SELECT count(*) FROM service_conversations WHERE profile_id IS NULL")
        ).scalar_one()
        lost = conn.execute(
            sa.text(
                "SELECT c.channel, p.channel FROM service_conversations c "
                "JOIN service_conversations p ON p.id = c.previous_conversation_id WHERE c.lost_context"
            )
        ).all()
        rated = conn.execute(sa.text("SELECT count(*) FROM service_conversations WHERE csat IS NOT NULL")).scalar()
        example = service.conversation_view(conn=conn, conversation_id=o["lost_context_example"])
    assert o["conversations"] > 0 and chats > 0 and rated > 0
    assert set(o["by_channel"]) <= {"chat", "phone"} and o["by_channel"]["phone"] > 0
    assert orphans == 0  # every chat and call found its customer
    # the demo's customer 1 calls the day after a chat that did not settle it
    assert o["lost_context"] >= 1 and all(a != b for a, b in lost)
    assert example is not None and example["previous_conversation"] is not None
    assert f"service: {o['conversations']} conversations" in out.getvalue()

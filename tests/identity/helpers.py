"""Helpers to put messages into the event log directly (the same validation as the API) and process them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.config import IngestLimits
from omnijourney.ingest import service as ingest
from omnijourney.ingest.schemas import ValidMessage, validate_message
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import run_until_idle
from omnijourney.store import db

RECEIVED = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def source(engine: sa.Engine, name: str, channel: str, trusted: bool) -> int:
    with db.write(engine) as conn:
        info = access.source_by_name(conn=conn, name=name) or access.create_source(
            conn=conn, name=name, channel=channel, trusted=trusted
        )
    return info.id


def append(engine: sa.Engine, source_id: int, channel: str, messages: list[dict[str, Any]]) -> None:
    rows = []
    for m in messages:
        v = validate_message(
            dict(m),
            default_type=None,
            source_channel=channel,
            received_at=RECEIVED,
            batch_sent_at=None,
            client_ip=None,
            limits=IngestLimits(),
        )
        assert isinstance(v, ValidMessage), v
        rows.append(v.row(source_id))
    with db.write(engine) as conn:
        ingest.append_events(conn=conn, rows=rows)


_HANDLERS = pipeline.default_handlers()


def process(engine: sa.Engine, batch: int = 2000) -> int:
    return run_until_idle(engine, _HANDLERS, batch=batch)


def snapshot(engine: sa.Engine) -> dict[str, Any]:
    """The whole resolved state in comparable form: clusters by their identifiers and events, traits."""
    with db.read(engine) as conn:
        roots = dict(conn.execute(sa.text("SELECT id, canonical_id FROM profiles")).all())
        links = conn.execute(sa.text("SELECT id_type, value, profile_id FROM identity_links")).all()
        pev = conn.execute(
            sa.text("SELECT e.message_id, pe.profile_id FROM profile_events pe JOIN events e ON e.id = pe.event_id")
        ).all()
        traits = conn.execute(sa.text("SELECT profile_id, key FROM profile_traits")).all()
    clusters: dict[int, dict[str, set]] = {}
    for t, v, pid in links:
        clusters.setdefault(roots[pid], {"ids": set(), "events": set(), "traits": set()})["ids"].add((t, v))
    for mid, pid in pev:
        clusters.setdefault(roots[pid], {"ids": set(), "events": set(), "traits": set()})["events"].add(mid)
    for pid, key in traits:
        clusters.setdefault(roots[pid], {"ids": set(), "events": set(), "traits": set()})["traits"].add(key)
    return {
        "clusters": {frozenset(c["ids"]): (frozenset(c["events"]), frozenset(c["traits"])) for c in clusters.values()},
        "members": {pid: roots[pid] for pid in roots},
        "links": {(t, v): pid for t, v, pid in links},
    }


def profile_of(engine: sa.Engine, id_type: str, value: str) -> int | None:
    with db.read(engine) as conn:
        row = conn.execute(
            sa.text(
                "SELECT p.canonical_id FROM identity_links l JOIN profiles p ON p.id = l.profile_id "
                "WHERE l.id_type = :t AND l.value = :v"
            ),
            {"t": id_type, "v": value},
        ).first()
    return row[0] if row else None


def conflicts(engine: sa.Engine) -> list[tuple[str, str, str]]:
    with db.read(engine) as conn:
        return [
            tuple(r) for r in conn.execute(sa.text("SELECT kind, id_type, value FROM identity_conflicts ORDER BY id"))
        ]


def rebuild(engine: sa.Engine, batch: int = 5000) -> int:
    """What `omnijourney identity rebuild` does: reset, then replay the log with the rebuild fast path."""
    with db.write(engine) as conn:
        pipeline.reset(conn=conn, handlers=_HANDLERS)
    return run_until_idle(engine, _HANDLERS, batch=batch, rebuild=True)


def identity_handler() -> Any:
    return next(h for h in _HANDLERS if h.name == "identity")


def graph_rows(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row of the identity graph, ids and profile ids included; only wall-clock
    stamps (conflict and unmerge times) and who unmerged are left out: a replay cannot know them."""
    queries = {
        "profiles": "SELECT id, created_at, merged_into, canonical_id FROM profiles ORDER BY id",
        "links": "SELECT id_type, value, profile_id, linked_at, event_id, source_id FROM identity_links "
        "ORDER BY id_type, value",
        "merges": "SELECT survivor_id, merged_id, id_type, value, event_id, source_id, merged_at, "
        "unmerged_at IS NULL FROM identity_merges ORDER BY survivor_id, merged_id, event_id",
        "conflicts": "SELECT kind, id_type, value, profile_id, other_profile_id, event_id, source_id, detail "
        "FROM identity_conflicts ORDER BY event_id, kind, id_type, value, profile_id",
        "profile_events": "SELECT event_id, profile_id, timestamp, channel, event FROM profile_events ORDER BY event_id",
        "blocks": "SELECT profile_a, profile_b FROM identity_blocks ORDER BY profile_a, profile_b",
    }
    with db.read(engine) as conn:
        return {name: [tuple(r) for r in conn.execute(sa.text(sql))] for name, sql in queries.items()}

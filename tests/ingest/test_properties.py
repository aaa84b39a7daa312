"""Property-based tests (hypothesis) of clock-skew correction and deduplication."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnijourney.access import service as access
from omnijourney.app import create_app
from omnijourney.ingest.schemas import assigned_message_id, corrected_timestamp
from omnijourney.store import db
from tests.conftest import start_server

times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))
skews = st.timedeltas(min_value=timedelta(days=-400), max_value=timedelta(days=400))
ages = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=30))


@given(
    received=times, skew=skews, age=ages, latency=st.timedeltas(min_value=timedelta(0), max_value=timedelta(minutes=5))
)
def test_skew_correction_recovers_true_time_whatever_the_device_clock(received, skew, age, latency) -> None:
    # true timeline: event at T, sent at T + age, received at T + age + latency
    true_sent = received - latency
    true_event = true_sent - age
    # a device clock off by `skew` stamps both client times off by the same amount
    got = corrected_timestamp(received_at=received, sent_at=true_sent + skew, original=true_event + skew)
    # the only error left is the network latency, never the device's skew
    assert got - true_event == latency


@given(received=times, original=times)
def test_without_sent_at_the_client_time_is_kept(received, original) -> None:
    assert corrected_timestamp(received_at=received, sent_at=None, original=original) == original
    assert corrected_timestamp(received_at=received, sent_at=None, original=None) == received


@given(st.dictionaries(st.sampled_from(["event", "userId", "properties", "timestamp"]), st.text(max_size=20)))
def test_assigned_message_id_ignores_transport_fields(msg) -> None:
    a = assigned_message_id({**msg, "sentAt": "2026-01-01T00:00:00Z", "writeKey": "k"})
    b = assigned_message_id({**msg, "sentAt": "2027-05-05T00:00:00Z"})
    assert a == b


message_ids = st.text(alphabet="abcdef0123", min_size=1, max_size=4)
deliveries = st.lists(st.lists(message_ids, min_size=1, max_size=12), min_size=1, max_size=6)


@pytest.fixture
def dedup_server(settings, engine):
    srv = start_server(create_app(settings, engine=engine, migrate_db=False), engine)
    yield srv
    srv.stop()


_source_counter = iter(range(10**9))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=deliveries)
def test_stored_events_are_exactly_the_distinct_message_ids(dedup_server, engine, batches) -> None:
    """However batches overlap and repeat, each (source, messageId) is stored exactly once."""
    with db.write(engine) as conn:
        src = access.create_source(conn=conn, name=f"h{next(_source_counter)}", channel="web")
    auth = {"Authorization": "Basic " + base64.b64encode(f"{src.write_key}:".encode()).decode()}
    with httpx.Client(base_url=dedup_server.url) as client:
        for ids in batches:
            body = {"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": m} for m in ids]}
            assert client.post("/v1/batch", json=body, headers=auth).status_code == 200
    with db.read(engine) as conn:
        stored = [
            r[0] for r in conn.execute(sa.text("SELECT message_id FROM events WHERE source_id = :s"), {"s": src.id})
        ]
    expected = {m for ids in batches for m in ids}
    assert sorted(stored) == sorted(expected)

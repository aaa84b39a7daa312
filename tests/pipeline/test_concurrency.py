"""Two API nodes ingesting at once while the processing stage runs: nothing lost, nothing twice."""

from __future__ import annotations

import base64
import threading

import httpx
import sqlalchemy as sa

from omnijourney.app import create_app
from omnijourney.store import db
from tests.conftest import World, count, start_server, wait_for


def test_two_nodes_overlapping_retries_and_live_processing(settings, engine, database_url, world: World) -> None:
    # each node has its own engine, as separate processes would
    engines = [db.create_engine(database_url, sqlite_synchronous="NORMAL") for _ in range(2)]
    nodes = [start_server(create_app(settings, engine=e, migrate_db=False), e) for e in engines]
    auth = {"Authorization": "Basic " + base64.b64encode(f"{world.pos_key}:".encode()).decode()}
    errors: list[str] = []

    def client(worker: int) -> None:
        with httpx.Client(timeout=60) as c:
            for b in range(15):
                # batches overlap between workers: the same ids are sent by two nodes concurrently
                ids = [f"m{(b * 50 + i + worker * 25) % 1000}" for i in range(50)]
                body = {"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": m} for m in ids]}
                r = c.post(nodes[worker % 2].url + "/v1/batch", json=body, headers=auth)
                if r.status_code != 200:
                    errors.append(r.text)

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        expected = {f"m{(b * 50 + i + w * 25) % 1000}" for w in range(4) for b in range(15) for i in range(50)}
        assert count(engine, "events") == len(expected)

        def processed() -> int:
            with db.read(engine) as conn:
                return int(conn.execute(sa.text("SELECT coalesce(sum(count),0) FROM daily_event_counts")).scalar_one())

        # both nodes run a pipeline worker: the checkpoint lock lets exactly one apply each event
        assert wait_for(lambda: processed() == len(expected), timeout=30)
        assert processed() == len(expected)
    finally:
        for n in nodes:
            n.stop()
        for e in engines:
            e.dispose()

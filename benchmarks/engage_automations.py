"""Journey automation throughput: scheduled steps executed per second, SMTP to a local sink.

    .venv/bin/python benchmarks/engage_automations.py                         # 10,000 due steps on SQLite
    .venv/bin/python benchmarks/engage_automations.py --steps 500             # smoke
    .venv/bin/python benchmarks/engage_automations.py --database-url postgresql://... --workers 2
    .venv/bin/python benchmarks/engage_automations.py --postgres --workers 2   # a throwaway local cluster

Set-up (not timed): N customers with an e-mail address and a marketing e-mail consent are put into
the event log and processed by the real pipeline; a one-step journey (`send` the `abandoned_cart`
template, with recommendations and the best offer) is stored and every customer entered, so N
steps are due. Timed: `--workers` executors (threads, each with its own SMTP connection) run
`run_due` until nothing is due: per step a claim (batched), the checks at the moment of sending
(entry still active, consent, quiet hours, frequency cap, channel), rendering, SMTP to an aiosmtpd
sink in **another process**, and the commit of the outcome with its timeline event.

Printed: steps/s, and the checks: messages the sink received == steps == message rows (no loss, no
duplicate). `--no-recommendations` measures the engine without the recommendation / offer look-ups.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from benchmarks.ingest import free_port  # noqa: E402
from omnijourney.access import service as access  # noqa: E402
from omnijourney.config import IngestLimits  # noqa: E402
from omnijourney.engage import schedule  # noqa: E402
from omnijourney.engage.delivery import DeliveryConfig  # noqa: E402
from omnijourney.engage.journeys import JourneyDef  # noqa: E402
from omnijourney.engage.schedule import Executor, RunStats  # noqa: E402
from omnijourney.ingest import service as ingest  # noqa: E402
from omnijourney.ingest.schemas import ValidMessage, validate_message  # noqa: E402
from omnijourney.pipeline import service as pipeline  # noqa: E402
from omnijourney.pipeline.worker import run_until_idle  # noqa: E402
from omnijourney.store import db, migrate  # noqa: E402
from omnijourney.store.base import utcnow  # noqa: E402


def _sink(port: int, counter: Any, ready: Any) -> None:
    """An SMTP server that accepts and counts (another process: it must not share our GIL)."""
    from aiosmtpd.controller import Controller

    class Count:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            with counter.get_lock():
                counter.value += 1
            return "250 OK"

    c = Controller(Count(), hostname="127.0.0.1", port=port)
    c.start()
    ready.set()
    threading.Event().wait()


def prepare(engine: sa.Engine, n: int, with_recommendations: bool) -> tuple[float, float]:
    """N customers (identify + consent) through the pipeline; the journey stored and N entries."""
    t0 = time.perf_counter()
    now = utcnow()
    with db.write(engine) as conn:
        src = access.create_source(conn=conn, name="bench-web", channel="web").id
    rows = []
    for i in range(n):
        for m in (
            {"type": "identify", "userId": f"u{i}", "traits": {"email": f"u{i}@bench.example", "firstName": f"U{i}"}},
            {
                "type": "track",
                "userId": f"u{i}",
                "event": "Consent Updated",
                "properties": {"purpose": "marketing", "channel": "email", "status": "granted"},
            },
        ):
            v = validate_message(
                m, default_type=None, source_channel="web", received_at=now, batch_sent_at=None, client_ip=None,
                limits=IngestLimits(),
            )  # fmt: skip
            assert isinstance(v, ValidMessage)
            rows.append(v.row(src))
    for i in range(0, len(rows), 5000):
        with db.write(engine) as conn:
            ingest.append_events(conn=conn, rows=rows[i : i + 5000])
    run_until_idle(engine, pipeline.default_handlers())
    loaded = time.perf_counter() - t0
    j = JourneyDef.model_validate(
        {
            "key": "bench",
            "name": "Bench",
            "enabled": True,
            "trigger": {"event": {"name": "Bench"}},
            "steps": [
                {
                    "key": "remind",
                    "send": {
                        "template": "abandoned_cart",
                        "subject": "Your cart",
                        "with_recommendations": with_recommendations,
                        "with_offer": with_recommendations,
                    },
                }
            ],
        }
    )
    t1 = time.perf_counter()
    with db.write(engine) as conn:
        version = schedule.sync_journeys(conn=conn, journeys=[j], now=now)["bench"]
        roots = [r[0] for r in conn.execute(sa.text("SELECT id FROM profiles WHERE id = canonical_id ORDER BY id"))]
        for p in roots:
            schedule.enter(conn, journey=j, version=version, profile_id=p, dedupe_key=f"b:{p}", context={}, now=now)
    return loaded, time.perf_counter() - t1


def run(url: str, n: int, workers: int, with_recommendations: bool) -> None:
    engine = db.create_engine(url, sqlite_synchronous="FULL")
    migrate.upgrade(engine)
    loaded, entered = prepare(engine, n, with_recommendations)
    port = free_port()
    counter, ready = multiprocessing.Value("i", 0), multiprocessing.Event()
    proc = multiprocessing.Process(target=_sink, args=(port, counter, ready), daemon=True)
    proc.start()
    ready.wait(30)
    config = DeliveryConfig(
        secret=b"bench", smtp_host="127.0.0.1", smtp_port=port, frequency_caps={"email": (3, 7.0)}, quiet_hours=None
    )
    executors = [Executor(engine, config) for _ in range(workers)]
    totals = RunStats()
    lock = threading.Lock()
    now = utcnow()

    def work(ex: Executor) -> None:
        while True:
            s = ex.run_due(now=now, limit=100, scan=False)
            with lock:
                totals.add(s)
            if s.claimed == 0:
                return

    t0 = time.perf_counter()
    threads = [threading.Thread(target=work, args=(ex,)) for ex in executors]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    for ex in executors:
        ex.close()
    deadline = time.monotonic() + 10
    while counter.value < totals.sent and time.monotonic() < deadline:
        time.sleep(0.05)
    with db.read(engine) as conn:
        rows = conn.execute(sa.text("SELECT count(*) FROM engage_journey_messages WHERE status = 'sent'")).scalar_one()
        done = conn.execute(sa.text("SELECT count(*) FROM engage_journey_steps WHERE status = 'done'")).scalar_one()
    proc.terminate()
    backend = url.split(":", 1)[0]
    print(
        f"{backend}: {n} customers loaded+processed in {loaded:.1f} s, {n} entries in {entered:.1f} s; "
        f"{workers} worker(s), recommendations {'on' if with_recommendations else 'off'}"
    )
    print(
        f"  executed {totals.claimed} steps in {elapsed:.2f} s = {totals.claimed / elapsed:.0f} steps/s "
        f"({totals.sent} sent, {totals.skipped} suppressed, {totals.failed} failed)"
    )
    ok = counter.value == totals.sent == rows == done == n
    print(f"  SMTP sink received {counter.value}, message rows {rows}, steps done {done}: {'OK' if ok else 'MISMATCH'}")
    engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=10_000, help="due steps (one per customer)")
    ap.add_argument("--workers", type=int, default=1, help="executor threads")
    ap.add_argument("--database-url", default=None, help="an empty PostgreSQL database (default: a temp SQLite file)")
    ap.add_argument(
        "--postgres",
        action="store_true",
        help="a fresh database on a throwaway PostgreSQL cluster (tests/pgcluster.py)",
    )
    ap.add_argument("--no-recommendations", action="store_true", help="templates without recommendations / offer")
    args = ap.parse_args()
    if args.database_url:
        run(args.database_url, args.steps, args.workers, not args.no_recommendations)
        return
    if args.postgres:
        from benchmarks.ingest import PgServer

        server = PgServer(None)
        try:
            run(server.fresh_database("oj_auto"), args.steps, args.workers, not args.no_recommendations)
        finally:
            server.close()
        return
    with tempfile.TemporaryDirectory() as tmp:
        run(f"sqlite:///{tmp}/bench.db", args.steps, args.workers, not args.no_recommendations)


if __name__ == "__main__":
    main()

"""Analytics: lake export throughput and funnel / KPI query latency on DuckDB.

1. Generates a deterministic (seeded) stream of --events events for --profiles customers
   (journeys page -> Product Viewed -> Product Added -> Checkout Started -> Order Completed with
   drop-offs at every step, over 30 days, web / app / store channels, mobile / desktop devices, UTM
   campaigns) and bulk-loads it into a fresh SQLite database with the server's `append_events`.
   The identity tables the export joins (`profiles`, `profile_events`) and the pipeline checkpoint
   are written directly (identity resolution has its own benchmark), so only the export is timed.
2. Times `omnijourney analytics export` (lake.export, batches of --batch): rows per second.
3. Times on DuckDB, over the exported lake: a 5-step ordered funnel with a 7-day window, the same
   with a breakdown by channel, the journey stage funnel and the cross-channel matrix (each run
   twice; the second run is the warm figure), and a hand-written DuckDB SQL baseline of the
   cross-channel matrix.
4. Markov attribution (first order, channels as touchpoints, journeys up to the first purchase,
   consecutive repeats collapsed): the Ibis transition counts plus the exact NumPy solution, next to
   a hand-written DuckDB SQL query for the same transition counts plus the same solution (the ratio
   is printed), and the whole attribution analysis (all seven models) as the API runs it.
5. Retention (first-order weekly cohorts, repeat orders "on" each of 8 weeks) through the Ibis
   definition and a hand-written DuckDB SQL query giving the same matrix (checked equal); the ratio
   Ibis / SQL is printed (the target is <= 1.5).

It is a script, not a test: `.venv/bin/python benchmarks/analytics.py --help`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.analytics import cache as result_cache
from omnijourney.analytics import filters as flt
from omnijourney.analytics import lake, service
from omnijourney.analytics.engine import open_lake
from omnijourney.analytics.funnels import FunnelSpec, Step, run_funnel
from omnijourney.identity.models import Profile, ProfileEvent
from omnijourney.ingest import service as ingest
from omnijourney.pipeline.models import Checkpoint
from omnijourney.store import db, migrate
from omnijourney.store.base import Encoded

START = datetime(2026, 10, 1, tzinfo=UTC)
STEPS = ("Product Viewed", "Product Added", "Checkout Started", "Order Completed")
CAMPAIGNS = ("spring", "autumn", "running", None, None)


def generate(n_events: int, n_profiles: int, seed: int):  # type: ignore[no-untyped-def]
    """Yield (profile, event row) in timestamp-independent log order until n_events."""
    rng = random.Random(seed)
    made = 0
    while made < n_events:
        p = rng.randrange(1, n_profiles + 1)
        t = START + timedelta(seconds=rng.randrange(30 * 86400))
        channel = rng.choice(("web", "web", "app", "store"))
        device = "desktop" if channel == "web" and rng.random() < 0.5 else "mobile"
        campaign = rng.choice(CAMPAIGNS)
        ctx = {"device": {"type": device}}
        if campaign:
            ctx["campaign"] = {"source": "instagram", "medium": "cpc", "name": campaign}
        journey = [("page", None)] + [("track", e) for e in STEPS]
        cut = 1 + sum(1 for _ in range(4) if rng.random() < 0.55)
        for typ, name in journey[: cut + 1]:
            if made >= n_events:
                return
            t += timedelta(seconds=rng.randrange(5, 3600))
            if rng.random() < 0.1:  # some continue in another channel
                channel = rng.choice(("web", "app", "store"))
            revenue = round(rng.uniform(10, 300), 2) if name == "Order Completed" else None
            payload = {"type": typ, "event": name, "properties": {}, "context": ctx}
            yield (
                p,
                {
                    "message_id": f"b{made}",
                    "type": typ,
                    "event": name,
                    "user_id": f"user{p}",
                    "anonymous_id": None,
                    "channel": channel,
                    "timestamp": t,
                    "received_at": t,
                    "sent_at": None,
                    "original_timestamp": None,
                    "order_id": f"o{made}" if revenue else None,
                    "cart_id": None,
                    "revenue": revenue,
                    "currency": "CZK" if revenue else None,
                    "context": ctx,
                    "payload": Encoded(orjson.dumps(payload).decode()),
                },
            )
            made += 1


def load(engine: sa.Engine, n_events: int, n_profiles: int, seed: int) -> int:
    with db.write(engine) as conn:
        src = access.create_source(conn=conn, name="bench", channel="web", trusted=True)
    rows, members = [], []
    next_id = 1

    def flush() -> None:
        nonlocal next_id
        if not rows:
            return
        with db.write(engine) as conn:
            ingest.append_events(conn=conn, rows=rows)
            conn.execute(
                sa.insert(ProfileEvent.__table__),
                [
                    {
                        "event_id": next_id + i,
                        "profile_id": p,
                        "timestamp": r["timestamp"],
                        "channel": r["channel"],
                        "event": r["event"],
                    }
                    for i, (p, r) in enumerate(zip(members, rows, strict=True))
                ],
            )
        next_id += len(rows)
        rows.clear()
        members.clear()

    for p, row in generate(n_events, n_profiles, seed):
        row["source_id"] = src.id
        rows.append(row)
        members.append(p)
        if len(rows) == 10_000:
            flush()
    flush()
    with db.write(engine) as conn:
        last = conn.execute(sa.text("SELECT max(id) FROM events")).scalar_one()
        assert last == next_id - 1, "event ids are not the dense sequence the benchmark assumed"
        conn.execute(
            sa.insert(Profile.__table__),
            [{"id": p, "created_at": START, "merged_into": None, "canonical_id": p} for p in range(1, n_profiles + 1)],
        )
        conn.execute(sa.insert(Checkpoint.__table__).values(name="main", position=last, action_seq=0, updated_at=START))
    return int(last)


def events_sql(lake_path: Path) -> str:
    """The lake's event files to read (committed, not superseded by compaction) as a DuckDB scan."""
    files = ", ".join(f"'{f}'" for f in lake.event_files(lake_path))
    return f"read_parquet([{files}])"


def timed(fn):  # type: ignore[no-untyped-def]
    """Wall time and result; prints the CPU time of this process (all DuckDB threads) and the load average."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    wall = time.perf_counter() - t
    print(f"  [cpu {time.process_time() - c:.2f} s, wall {wall:.2f} s, load {os.getloadavg()[0]:.1f}]", flush=True)
    return wall, out


MARKOV_SQL = """
WITH ev AS (
  SELECT e.*, coalesce(m.canonical_id, e.profile_id) AS unit
  FROM {events} e
  LEFT JOIN read_parquet('{lake}/dimensions/identity_map.parquet') m USING (profile_id)),
conv AS (
  SELECT unit, ts_ms AS c_ts, event_id AS c_id FROM (
    SELECT unit, ts_ms, event_id, row_number() OVER (PARTITION BY unit ORDER BY ts_ms, event_id) AS rn
    FROM ev WHERE unit IS NOT NULL AND event = 'Order Completed') WHERE rn = 1),
t AS (
  SELECT ev.unit, ev.ts_ms, ev.event_id, ev.channel AS tp, conv.c_ts IS NOT NULL AS converted
  FROM ev LEFT JOIN conv USING (unit)
  WHERE ev.unit IS NOT NULL AND ev.channel IS NOT NULL AND ev.type NOT IN ('identify', 'alias', 'group')
    AND (ev.event IS NULL OR ev.event <> 'Order Completed')
    AND (conv.c_ts IS NULL OR ev.ts_ms < conv.c_ts OR (ev.ts_ms = conv.c_ts AND ev.event_id < conv.c_id))),
runs AS (
  SELECT * FROM (SELECT *, lead(tp) OVER (PARTITION BY unit ORDER BY ts_ms, event_id) AS nxt FROM t)
  WHERE nxt IS NULL OR nxt <> tp),
k AS (
  SELECT tp, converted, lag(tp) OVER w AS prv, lead(tp) OVER w AS after
  FROM runs WINDOW w AS (PARTITION BY unit ORDER BY ts_ms, event_id))
SELECT coalesce(prv, '(start)') AS frm, tp AS "to", count(*) AS n FROM k GROUP BY ALL
UNION ALL
SELECT tp, CASE WHEN converted THEN '(conversion)' ELSE '(null)' END, count(*) FROM k WHERE after IS NULL GROUP BY ALL
"""


def markov_benchmark(data_dir: Path) -> None:
    """Markov attribution on DuckDB: Ibis vs hand-written SQL for the transition counts, the same exact solve."""
    import duckdb

    from omnijourney.analytics import attribution as attr

    spec = attr.AttributionSpec(models=("markov",))

    def ibis_markov() -> tuple[dict[tuple[str, str], int], dict[str, float]]:
        lt = open_lake(data_dir)
        try:
            rows = lt.execute(attr.transitions_expr(attr.touches_expr(lt, flt.Filters(), spec))).to_pylist()
        finally:
            lt.close()
        counts = {(r["frm"], r["to"]): int(r["count"]) for r in rows}
        channels = sorted({t for _, t in counts} - {attr.CONV, attr.NULL})
        return counts, attr.markov_removal_effects(counts, channels)[1]

    def sql_markov() -> tuple[dict[tuple[str, str], int], dict[str, float]]:
        rows = duckdb.sql(MARKOV_SQL.format(lake=data_dir / "lake", events=events_sql(data_dir / "lake"))).fetchall()
        counts = {(a, b): int(n) for a, b, n in rows}
        channels = sorted({t for _, t in counts} - {attr.CONV, attr.NULL})
        return counts, attr.markov_removal_effects(counts, channels)[1]

    timed(ibis_markov)  # warm both
    timed(sql_markov)
    t_ibis, (c_ibis, e_ibis) = timed(ibis_markov)
    t_sql, (c_sql, e_sql) = timed(sql_markov)
    assert c_ibis == c_sql and e_ibis == e_sql, "the Ibis and the SQL answers differ"
    effects = ", ".join(f"{k} {v:.3f}" for k, v in sorted(e_ibis.items()))
    print(
        f"Markov attribution (transitions + exact solve): Ibis {t_ibis:.2f} s, hand-written DuckDB SQL {t_sql:.2f} s, "
        f"ratio {t_ibis / t_sql:.2f} ({sum(c_ibis.values()):,} transitions; removal effects {effects})"
    )
    lt = open_lake(data_dir)
    t_compile, _ = timed(lambda: lt.backend.compile(attr.transitions_expr(attr.touches_expr(lt, flt.Filters(), spec))))
    lt.close()
    print(
        f"  of which Ibis compiling the expression to SQL (pure Python, independent of the data size): {t_compile:.2f} s"
    )
    t_all, res = timed(
        lambda: service.run(data_dir=data_dir, analysis="attribution", filters=flt.Filters(), attribution=None)
    )
    print(f"attribution, all seven models as the API runs them: {t_all:.2f} s ({res['journeys']:,} journeys)")


FUNNEL_SQL = """
WITH s AS (
  SELECT coalesce(m.canonical_id, e.profile_id) AS unit, e.ts_ms, e.type, e.event,
         row_number() OVER (PARTITION BY coalesce(m.canonical_id, e.profile_id) ORDER BY e.ts_ms, e.event_id) AS seq
  FROM {events} e
  LEFT JOIN read_parquet('{lake}/dimensions/identity_map.parquet') m USING (profile_id)
  WHERE e.profile_id IS NOT NULL),
n AS (
  SELECT unit, seq, ts_ms, type = 'page' AS is0,
    min(CASE WHEN event = 'Product Viewed' THEN seq END) OVER w AS n1,
    min(CASE WHEN event = 'Product Added' THEN seq END) OVER w AS n2,
    min(CASE WHEN event = 'Checkout Started' THEN seq END) OVER w AS n3,
    min(CASE WHEN event = 'Order Completed' THEN seq END) OVER w AS n4
  FROM s WINDOW w AS (PARTITION BY unit ORDER BY seq ROWS BETWEEN 1 FOLLOWING AND UNBOUNDED FOLLOWING)),
a0 AS (SELECT unit, seq AS s0, ts_ms AS t0, n1 FROM n WHERE is0),
a1 AS (SELECT a.unit, a.s0, a.t0, b.seq AS s1, b.ts_ms AS t1, b.n2 FROM a0 a
       LEFT JOIN n b ON b.unit = a.unit AND b.seq = a.n1 AND b.ts_ms <= a.t0 + {window}),
a2 AS (SELECT a.*, b.seq AS s2, b.ts_ms AS t2, b.n3 FROM a1 a
       LEFT JOIN n b ON b.unit = a.unit AND b.seq = a.n2 AND b.ts_ms <= a.t0 + {window}),
a3 AS (SELECT a.*, b.seq AS s3, b.ts_ms AS t3, b.n4 FROM a2 a
       LEFT JOIN n b ON b.unit = a.unit AND b.seq = a.n3 AND b.ts_ms <= a.t0 + {window}),
a4 AS (SELECT a.*, b.seq AS s4, b.ts_ms AS t4 FROM a3 a
       LEFT JOIN n b ON b.unit = a.unit AND b.seq = a.n4 AND b.ts_ms <= a.t0 + {window}),
best AS (
  SELECT *, 1 + (s1 IS NOT NULL)::INT + (s2 IS NOT NULL)::INT + (s3 IS NOT NULL)::INT + (s4 IS NOT NULL)::INT AS steps
  FROM a4 QUALIFY row_number() OVER (PARTITION BY unit ORDER BY steps DESC, s0) = 1)
SELECT steps, steps < 5 AND t0 + {window} >= {as_of} AS open, count(*) AS units,
       list(t0) FILTER (steps >= 2) AS t0, list(t1) FILTER (steps >= 2) AS t1, list(t2) FILTER (steps >= 2) AS t2,
       list(t3) FILTER (steps >= 2) AS t3, list(t4) FILTER (steps >= 2) AS t4
FROM best GROUP BY ALL
"""


def bench_funnel(data_dir: Path, spec: FunnelSpec, as_of: int) -> None:
    """The 5-step ordered funnel through the Ibis definition vs a hand-written DuckDB SQL query (same counts)."""
    import duckdb

    from omnijourney.analytics.funnels import funnel_expressions

    sql = FUNNEL_SQL.format(
        lake=data_dir / "lake", events=events_sql(data_dir / "lake"), window=spec.window_seconds * 1000, as_of=as_of
    )

    def sql_run() -> dict[tuple[int, bool], int]:
        rows = duckdb.sql(sql).fetch_arrow_table().select(["steps", "open", "units"]).to_pylist()
        return {(r["steps"], r["open"]): r["units"] for r in rows}

    def ibis_counts() -> dict[tuple[int, bool], int]:
        lt = open_lake(data_dir)
        try:
            rows = lt.execute(funnel_expressions(lt, spec, flt.Filters(), as_of)[0]).to_pylist()
        finally:
            lt.close()
        return {(r["steps"], r["open"]): r["units"] for r in rows}

    t_ibis, _ = timed(lambda: run_funnel(open_lake(data_dir), spec, flt.Filters(), as_of))
    t_sql, got_sql = timed(sql_run)
    assert ibis_counts() == got_sql, "the Ibis and the SQL funnel counts differ"
    print(
        f"5-step funnel: Ibis (the whole analysis) {t_ibis:.2f} s, hand-written DuckDB SQL (counts and step "
        f"times) {t_sql:.2f} s, ratio {t_ibis / t_sql:.2f}; same counts"
    )


RETENTION_SQL = """
WITH e AS (
  SELECT coalesce(m.canonical_id, e.profile_id) AS unit, (e.ts_ms // 86400000 + 3) // 7 AS w
  FROM {events} e
  LEFT JOIN read_parquet('{lake}/dimensions/identity_map.parquet') m USING (profile_id)
  WHERE e.profile_id IS NOT NULL AND e.event = 'Order Completed'),
c AS (SELECT unit, min(w) AS cohort FROM e GROUP BY unit),
r AS (SELECT DISTINCT unit, w FROM e)
SELECT c.cohort, r.w - c.cohort AS k, count(*) AS n FROM c JOIN r USING (unit)
WHERE r.w > c.cohort AND r.w - c.cohort <= 8 GROUP BY ALL
UNION ALL SELECT cohort, 0, count(*) FROM c GROUP BY cohort
"""


def bench_retention(tmp: Path, as_of: int) -> None:
    """Retention through the Ibis definition vs a hand-written DuckDB SQL query for the same matrix."""
    import duckdb

    from omnijourney.analytics.retention import RetentionSpec, period_start

    spec = RetentionSpec(granularity="week", periods=8)

    def ibis_run() -> dict:
        return service.run(data_dir=tmp, analysis="retention", filters=flt.Filters(), as_of_ms=as_of, options=spec)

    def sql_run() -> list:
        return duckdb.sql(RETENTION_SQL.format(lake=tmp / "lake", events=events_sql(tmp / "lake"))).fetchall()

    cold, out = timed(ibis_run)
    warm, _ = timed(ibis_run)
    sql_cold, rows = timed(sql_run)
    sql_warm, _ = timed(sql_run)
    want = {(period_start(c, "week").isoformat(), k): n for c, k, n in rows}
    got = {(c["cohort"], k): v for c in out["cohorts"] for k, v in enumerate(c["retained"]) if v}
    assert got == want, "the Ibis retention and the SQL baseline disagree"
    cohorts = out["cohorts"]
    print(
        f"retention (weekly first-order cohorts, 8 weeks): {cold:.2f} s first, {warm:.2f} s second (DuckDB); "
        f"hand-written DuckDB SQL: {sql_cold:.2f} s first, {sql_warm:.2f} s second; "
        f"ratio {warm / sql_warm:.2f} (warm); {len(cohorts)} cohorts, {out['customers']:,} customers"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--profiles", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--lake", type=Path, help="retention only, over a data dir kept with --keep")
    ap.add_argument(
        "--no-compact", dest="compact", action="store_false", help="query the export's small files as written"
    )
    ap.add_argument("--reuse", type=Path, help="a data dir kept with --keep: skip loading, export and query again")
    args = ap.parse_args()
    os.environ[result_cache.ENV] = "0"  # time the engines, not the result cache (measured once, separately)
    if args.lake:  # a lake kept with --keep: only the retention comparison
        bench_retention(args.lake, flt.to_ms(START + timedelta(days=40)))
        return

    tmp = args.reuse or Path(tempfile.mkdtemp(prefix="oj-bench-analytics-"))
    try:
        engine = db.create_engine(f"sqlite:///{tmp / 'bench.db'}", sqlite_synchronous="NORMAL")
        if args.reuse:  # a data dir kept with --keep: the same events, the lake exported again from scratch
            shutil.rmtree(tmp / "lake", ignore_errors=True)
            with db.write(engine) as conn:
                conn.execute(sa.text("DELETE FROM analytics_export_checkpoints"))
                n = int(conn.execute(sa.text("SELECT count(*) FROM events")).scalar_one())
            print(f"reusing {n:,} events in {tmp / 'bench.db'}")
        else:
            migrate.upgrade(engine)
            t_load, n = timed(lambda: load(engine, args.events, args.profiles, args.seed))
            print(
                f"loaded {n:,} events for {args.profiles:,} customers into SQLite in {t_load:.1f} s (not timed below)"
            )

        t_export, res = timed(lambda: lake.export(engine=engine, data_dir=tmp, batch=args.batch, compact=False))
        assert res.rows == n
        size = sum(f.stat().st_size for f in (tmp / "lake").rglob("*.parquet"))
        print(
            f"export: {res.rows:,} rows in {t_export:.1f} s = {res.rows / t_export:,.0f} rows/s "
            f"({res.files} files, {size / 1e6:.1f} MB)"
        )
        if args.compact:
            t_compact, comp = timed(lambda: lake.compact(data_dir=tmp, grace_seconds=0))
            _, comp2 = timed(lambda: lake.compact(data_dir=tmp, grace_seconds=0))
            live = lake.event_files(tmp / "lake")
            size = sum(f.stat().st_size for f in live)
            print(
                f"compaction: {comp.merged:,} files into {comp.written} in {t_compact:.1f} s "
                f"= {res.rows / t_compact:,.0f} rows/s; {comp2.pruned:,} superseded files deleted; "
                f"{len(live)} files, {size / 1e6:.1f} MB"
            )

        as_of = flt.to_ms(START + timedelta(days=40))
        spec = FunnelSpec(
            steps=(Step("page", types=("page",)), *(Step(e, (e,)) for e in STEPS)), window_seconds=7 * 86400
        )
        spec_bd = FunnelSpec(steps=spec.steps, window_seconds=spec.window_seconds, breakdown="channel")
        queries = {
            "5-step funnel": lambda: run_funnel(open_lake(tmp), spec, flt.Filters(), as_of),
            "5-step funnel by channel": lambda: run_funnel(open_lake(tmp), spec_bd, flt.Filters(), as_of),
            "stage funnel": lambda: service.run(data_dir=tmp, analysis="stages", filters=flt.Filters(), as_of_ms=as_of),
            "cross-channel matrix": lambda: service.run(data_dir=tmp, analysis="cross-channel", filters=flt.Filters()),
        }
        for name, q in queries.items():
            cold, out = timed(q)
            warm, _ = timed(q)
            extra = ""
            if "steps" in out:
                extra = " steps " + " > ".join(f"{s['count']:,}" for s in out["steps"])
            print(f"{name}: {cold:.2f} s first, {warm:.2f} s second (DuckDB){extra}")

        # the result cache (analytics/cache.py) answers a reload over an unchanged lake
        os.environ[result_cache.ENV] = "1"
        timed(queries["stage funnel"])
        t_hit, _ = timed(queries["stage funnel"])
        print(f"stage funnel again over the unchanged lake, from the result cache: {t_hit * 1000:.1f} ms")
        os.environ[result_cache.ENV] = "0"

        import duckdb

        sql = f"""
        WITH e AS (SELECT * FROM {events_sql(tmp / "lake")}),
        f AS (SELECT profile_id, channel, row_number() OVER (PARTITION BY profile_id ORDER BY ts_ms, event_id) rn FROM e),
        p AS (SELECT profile_id, channel, row_number() OVER (PARTITION BY profile_id ORDER BY ts_ms, event_id) rn
              FROM e WHERE event = 'Order Completed')
        SELECT f.channel, p.channel, count(*) FROM f JOIN p USING (profile_id)
        WHERE f.rn = 1 AND p.rn = 1 GROUP BY ALL"""
        t_sql, _ = timed(lambda: duckdb.sql(sql).fetchall())
        print(f"cross-channel matrix, hand-written DuckDB SQL baseline: {t_sql:.2f} s")
        bench_funnel(tmp, spec, as_of)
        markov_benchmark(tmp)
        bench_retention(tmp, as_of)
    finally:
        if args.keep or args.reuse:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

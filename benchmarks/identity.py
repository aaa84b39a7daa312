"""Identity resolution: incremental processing throughput and full rebuild time.

For each backend this script

1. prepares a fresh, migrated database with four sources: `web` and `app` (untrusted),
   `pos` (channel store) and `callcentre` (channel call_center), both trusted;
2. generates a deterministic (seeded) population of --profiles people and a stream of
   --events events with a realistic identifier mix (see benchmarks/_common.py: mostly
   anonymous web/app traffic over several devices per person, ~10% identify calls linking
   the device to user id / e-mail / phone, POS purchases with loyalty cards, call-centre
   calls with the caller's phone, junk values, a few shared family devices) and bulk-loads
   it into the event log with `append_events`, 10,000 rows per transaction (not timed);
3. times incremental processing: `run_until_idle(engine, default_handlers(), batch=B)`
   over the whole log (identity resolution, then profiles, in the pipeline's transactions);
4. times a full rebuild: `reset`, then `run_until_idle` again, and checks that it rebuilt
   the same graph;
5. prints customers, profiles, merges and conflicts, the issue's targets (processing
   >= 20,000 events/s; a rebuild of 10M events within 2 minutes, extrapolated linearly
   from the measured rebuild) and one plain line per backend.

It is a script, not a test: run `.venv/bin/python benchmarks/identity.py --help`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    GraphStats,
    PgServer,
    World,
    graph_stats,
    load_events,
    make_console,
    prepare_database,
)

TARGET_EVENTS_PER_S = 20_000
TARGET_REBUILD_EVENTS = 10_000_000
TARGET_REBUILD_SECONDS = 120.0


@dataclass
class BackendResult:
    backend: str
    loaded: int = 0
    load_s: float = 0.0
    incremental_n: int = 0
    incremental_s: float = 0.0
    reset_s: float = 0.0
    rebuild_n: int = 0
    rebuild_s: float = 0.0  # reset + replay
    #: CPU seconds of this process (user + system): the figure to compare on a shared machine
    incremental_cpu: float = 0.0
    rebuild_cpu: float = 0.0
    stats: GraphStats | None = None
    rebuilt: GraphStats | None = None
    digest: str = ""
    rebuilt_digest: str = ""
    error: str | None = None

    @property
    def incremental_rate(self) -> float:
        return self.incremental_n / self.incremental_s if self.incremental_s else 0.0

    @property
    def rebuild_rate(self) -> float:
        return self.rebuild_n / self.rebuild_s if self.rebuild_s else 0.0

    @property
    def rebuild_10m_s(self) -> float:
        return TARGET_REBUILD_EVENTS / self.rebuild_rate if self.rebuild_rate else float("inf")

    @property
    def same_graph(self) -> bool:
        return (
            self.stats is not None
            and self.rebuilt is not None
            and self.stats.same_graph(self.rebuilt)
            and self.digest == self.rebuilt_digest
        )

    @property
    def processing_met(self) -> bool:
        return self.incremental_rate >= TARGET_EVENTS_PER_S

    @property
    def rebuild_met(self) -> bool:
        return self.rebuild_10m_s <= TARGET_REBUILD_SECONDS

    def line(self) -> str:
        if self.error:
            return f"{self.backend} ERROR {self.error}"
        s = self.stats
        assert s is not None
        return (
            f"{self.backend} incremental={self.incremental_rate:.0f} ev/s rebuild={self.rebuild_s:.1f}s "
            f"({self.rebuild_rate:.0f} ev/s) rebuild_10M~{self.rebuild_10m_s:.0f}s events={self.incremental_n} "
            f"cpu_incremental={self.incremental_cpu / max(1, self.incremental_n) * 1e6:.0f}us/ev "
            f"cpu_rebuild={self.rebuild_cpu / max(1, self.rebuild_n) * 1e6:.0f}us/ev "
            f"customers={s.clusters} profiles={s.profiles} merges={s.merges} conflicts={s.conflict_total} "
            f"target_processing={'MET' if self.processing_met else 'NOT-MET'} "
            f"target_rebuild={'MET' if self.rebuild_met else 'NOT-MET'} "
            f"rebuild_graph={'SAME' if self.same_graph else 'DIFFERENT'}"
        )


def graph_digest(engine: Any) -> str:
    """A hash of the whole graph's content (not only its counts): profiles with their parents and
    roots, links with their owners, merges, conflicts and event memberships, in a stable order."""
    import hashlib

    import sqlalchemy as sa

    from omnijourney.store import db

    queries = [
        "SELECT id, created_at, merged_into, canonical_id FROM profiles ORDER BY id",
        "SELECT id_type, value, profile_id, linked_at, event_id, source_id FROM identity_links ORDER BY id_type, value",
        "SELECT survivor_id, merged_id, id_type, value, event_id, source_id, merged_at, unmerged_at FROM "
        "identity_merges ORDER BY survivor_id, merged_id, event_id",
        "SELECT kind, id_type, value, profile_id, other_profile_id, event_id, detail FROM identity_conflicts "
        "ORDER BY event_id, kind, id_type, value, profile_id",
        "SELECT event_id, profile_id, timestamp, channel, event FROM profile_events ORDER BY event_id",
        "SELECT profile_a, profile_b FROM identity_blocks ORDER BY profile_a, profile_b",
    ]
    h = hashlib.blake2b(digest_size=16)
    with db.read(engine) as conn:
        for sql in queries:
            for row in conn.execute(sa.text(sql)):
                h.update(repr(tuple(row)).encode())
            h.update(b"|")
    return h.hexdigest()


def _handlers(which: str) -> list[Any]:
    from omnijourney.pipeline import service as pipeline

    handlers = pipeline.default_handlers()
    if which == "identity":  # the identity stage alone (plus the log's daily counts)
        handlers = [h for h in handlers if h.name in ("daily_counts", "identity")]
    return handlers


def _run(engine: Any, handlers: Any, batch: int, *, rebuild: bool = False) -> int:
    import inspect

    from omnijourney.pipeline.worker import run_until_idle

    if "rebuild" not in inspect.signature(run_until_idle).parameters:  # an older tree, for A/B runs
        return run_until_idle(engine, handlers, batch=batch)
    return run_until_idle(engine, handlers, batch=batch, rebuild=rebuild)


def _timed_run(
    engine: Any, handlers: Any, batch: int, profile_top: int, say: Any, *, rebuild: bool = False
) -> tuple[int, float, float]:
    """Events processed, wall seconds, CPU seconds of this process."""
    if not profile_top:
        t0, c0 = time.perf_counter(), time.process_time()
        n = _run(engine, handlers, batch, rebuild=rebuild)
        return n, time.perf_counter() - t0, time.process_time() - c0
    import cProfile
    import io
    import pstats

    from rich.markup import escape

    prof = cProfile.Profile()
    t0, c0 = time.perf_counter(), time.process_time()
    prof.enable()
    n = _run(engine, handlers, batch, rebuild=rebuild)
    prof.disable()
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(profile_top)
    stats.sort_stats("tottime").print_stats(profile_top)
    identity = [
        (func, st[3])
        for func, st in stats.stats.items()
        if func[2] == "apply" and func[0].endswith("identity/handler.py")
    ]
    share = (
        f"; IdentityHandler.apply cumulative {identity[0][1]:.2f}s = {identity[0][1] / n * 1e6:.0f}us/ev"
        if identity and n
        else ""
    )
    say(
        f"cProfile of the {'rebuild' if rebuild else 'incremental'} run (figures under the profiler are slower){share}:\n"
        f"{escape(out.getvalue())}"
    )
    return n, elapsed, cpu


def run_backend(backend: str, args: argparse.Namespace, say: Any) -> BackendResult:
    from rich.markup import escape

    from omnijourney.pipeline import service as pipeline
    from omnijourney.store import db

    result = BackendResult(backend)
    workdir = Path(tempfile.mkdtemp(prefix=f"oj-bench-identity-{backend}-"))
    pg: PgServer | None = None
    engine = None
    try:
        if backend == "sqlite":
            url = f"sqlite:///{workdir / 'identity.db'}"
        else:
            say("starting PostgreSQL" if not args.pg_url else "using the PostgreSQL server at --pg-url")
            pg = PgServer(args.pg_url)
            url = pg.fresh_database("oj_bench_identity")
        sources = prepare_database(url)
        engine = db.create_engine(url, sqlite_synchronous=args.sqlite_synchronous)
        world = World(args.seed, args.profiles, args.events)
        step = max(args.events // 10, 10_000)
        mark = [step]

        def progress(n: int) -> None:
            if n >= mark[0]:
                say(f"  loaded {n:,} / {args.events:,}")
                mark[0] += step

        say(f"generating and loading {args.events:,} events for {args.profiles:,} people (not timed)")
        t0 = time.perf_counter()
        result.loaded = load_events(engine, world, {k: s.id for k, s in sources.items()}, progress=progress)
        result.load_s = time.perf_counter() - t0
        say(f"loaded {result.loaded:,} events in {result.load_s:.1f}s; incremental processing, batch {args.batch}")

        handlers = _handlers(args.handlers)
        result.incremental_n, result.incremental_s, result.incremental_cpu = _timed_run(
            engine, handlers, args.batch, 0 if args.cprofile_rebuild else args.cprofile, say
        )
        result.stats = graph_stats(engine)
        result.digest = graph_digest(engine)
        say(
            f"incremental: {result.incremental_n:,} events in {result.incremental_s:.1f}s "
            f"({result.incremental_rate:,.0f} ev/s, CPU {result.incremental_cpu:.1f}s); rebuilding"
        )

        t0, c0 = time.perf_counter(), time.process_time()
        with db.write(engine) as conn:
            pipeline.reset(conn=conn, handlers=handlers)
        result.reset_s = time.perf_counter() - t0
        reset_cpu = time.process_time() - c0
        rebuild_batch = args.rebuild_batch or args.batch
        result.rebuild_n, replay_s, replay_cpu = _timed_run(
            engine, handlers, rebuild_batch, args.cprofile if args.cprofile_rebuild else 0, say, rebuild=True
        )
        result.rebuild_s = result.reset_s + replay_s
        result.rebuild_cpu = reset_cpu + replay_cpu
        result.rebuilt = graph_stats(engine)
        result.rebuilt_digest = graph_digest(engine)
        say(
            f"rebuild (batch {rebuild_batch}): reset {result.reset_s:.1f}s + replay of {result.rebuild_n:,} events = "
            f"{result.rebuild_s:.1f}s ({result.rebuild_rate:,.0f} ev/s, CPU {result.rebuild_cpu:.1f}s); "
            f"graph {'same' if result.same_graph else 'DIFFERENT'}"
        )
        if not result.same_graph:
            say(f"  incremental {result.stats}\n  rebuilt     {result.rebuilt}")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"[red]failed:[/red]\n{escape(traceback.format_exc())}")
    finally:
        if engine is not None:
            engine.dispose()
        if pg is not None:
            pg.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument(
        "--profiles",
        type=int,
        default=100_000,
        help="people in the generated population (default 100000; the issue's full size is 1000000)",
    )
    p.add_argument(
        "--events",
        type=int,
        default=1_000_000,
        help="events in the log (default 1000000; the issue's full size is 10000000)",
    )
    p.add_argument("--batch", type=int, default=5000, help="events per processing step (default 5000)")
    p.add_argument(
        "--rebuild-batch",
        type=int,
        default=0,
        help="events per step of the rebuild (default: what `omnijourney identity rebuild` uses)",
    )
    p.add_argument(
        "--handlers",
        choices=("all", "identity"),
        default="all",
        help="all: every handler of the processing stage (default); identity: daily counts and identity only",
    )
    p.add_argument("--seed", type=int, default=1, help="workload seed (same seed, same events)")
    p.add_argument(
        "--pg-url",
        default=None,
        help="PostgreSQL server to use instead of a throwaway cluster;\n"
        "the role needs CREATEDB (fresh databases are created and dropped)",
    )
    p.add_argument(
        "--sqlite-synchronous",
        default=os.environ.get("OMNIJOURNEY_SQLITE_SYNCHRONOUS", "FULL").upper(),
        type=str.upper,
        choices=("OFF", "NORMAL", "FULL", "EXTRA"),
        help="SQLite synchronous pragma for the processing connection (default FULL, the server's default)",
    )
    p.add_argument(
        "--cprofile",
        type=int,
        default=0,
        metavar="N",
        help="profile the incremental run with cProfile and print the top N functions by cumulative time\n"
        "(the timed figure is then inflated by the profiler)",
    )
    p.add_argument("--cprofile-rebuild", action="store_true", help="with --cprofile: profile the rebuild instead")
    args = p.parse_args(argv)
    if args.profiles < 1 or args.events < 1 or args.batch < 1:
        p.error("--profiles, --events and --batch must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.table import Table

    args = parse_args(argv)
    console = make_console()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    full = args.profiles >= 1_000_000 and args.events >= 10_000_000
    console.print(
        f"[bold]identity benchmark[/bold]: {args.profiles:,} people, {args.events:,} events "
        f"({'the issue full size' if full else 'scaled down; the issue full size is 1M people / 10M events'}), "
        f"batch {args.batch}, seed {args.seed}, sqlite synchronous={args.sqlite_synchronous}, {os.cpu_count()} CPUs"
    )
    results = []
    for backend in backends:
        console.rule(backend)
        results.append(run_backend(backend, args, lambda m, b=backend: console.print(f"[dim]{b}:[/dim] {m}")))

    table = Table(title=f"identity resolution: {args.events:,} events, {args.profiles:,} people, batch {args.batch}")
    cols = (
        "backend",
        "incremental ev/s",
        "rebuild s",
        "rebuild ev/s",
        "10M rebuild s (extrap.)",
        "customers",
        "profiles",
        "merges",
        "conflicts",
        "graph after rebuild",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("backend", "graph after rebuild") else "right")
    for r in results:
        if r.error or r.stats is None:
            table.add_row(r.backend, "[red]ERROR[/red]", *["-"] * (len(cols) - 2))
            continue
        s = r.stats
        ok = "[green]" if r.processing_met else "[red]"
        ok_rebuild = "[green]" if r.rebuild_met else "[red]"
        table.add_row(
            r.backend,
            f"{ok}{r.incremental_rate:,.0f}[/]",
            f"{r.rebuild_s:.1f}",
            f"{r.rebuild_rate:,.0f}",
            f"{ok_rebuild}{r.rebuild_10m_s:,.0f}[/]",
            f"{s.clusters:,}",
            f"{s.profiles:,}",
            f"{s.merges:,}",
            f"{s.conflict_total:,}",
            "[green]same[/green]" if r.same_graph else "[red]DIFFERENT[/red]",
        )
    console.print(table)
    for r in results:
        if r.error:
            console.print(f"[red]{r.backend}: {r.error}[/red]")
            continue
        s = r.stats
        assert s is not None
        console.print(
            f"{r.backend}: {s.events:,} events, {s.attached:,} on a timeline "
            f"({s.events - s.attached:,} without a usable identifier), {s.links:,} identifier links; "
            f"conflicts: {s.conflicts_text()}; load {r.loaded / r.load_s:,.0f} rows/s (not timed)"
        )
        console.print(
            f"{r.backend}: target processing >= {TARGET_EVENTS_PER_S:,} ev/s: "
            f"{'[green]met[/green]' if r.processing_met else '[red]not met[/red]'} ({r.incremental_rate:,.0f}); "
            f"target rebuild of 10M events <= {TARGET_REBUILD_SECONDS:.0f}s: "
            f"{'[green]met[/green]' if r.rebuild_met else '[red]not met[/red]'} "
            f"({'measured' if r.rebuild_n >= TARGET_REBUILD_EVENTS else 'extrapolated linearly'}: "
            f"{r.rebuild_10m_s:,.0f}s)"
        )
    for r in results:
        print(r.line(), flush=True)
    return 0 if all(not r.error and r.same_graph for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Customer 360 read latency: lookup by e-mail, GET 360 and the first timeline page under concurrent readers.

For each backend this script

1. prepares a database as benchmarks/identity.py does (the same seeded population and
   event stream, loaded with `append_events` and fully processed with `run_until_idle`;
   not timed) and creates an `agent` API token with `create_token`;
2. samples e-mail addresses the graph knows (seeded), so every lookup should find someone;
3. starts `omnijourney serve --no-pipeline` as a subprocess on a free loopback port (the
   log is fully processed, so only reads are measured);
4. runs --readers concurrent readers (threads spread over --client-procs processes, one
   keep-alive HTTP connection each (`_common.HttpClient`); a closed loop without pauses, or with `--think-ms`, a pause of
   that mean before each request). Each reader repeats the agent's
   sequence: GET /api/profiles/lookup?type=email&value=..., GET /api/profiles/{id},
   GET /api/profiles/{id}/timeline?limit=50, --requests sequences in total;
5. prints p50/p99/max latency and requests/s for each call and for the whole sequence,
   against the issue's target (p99 < 50 ms), and one plain line per backend.

It is a script, not a test: run `.venv/bin/python benchmarks/profile_read.py --help`.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    HttpClient,
    Pauses,
    PgServer,
    Server,
    add_think_argument,
    add_world_arguments,
    drive_readers,
    known_emails,
    make_console,
    percentile,
    read_world,
    tree_cpu_seconds,
)

TARGET_P99_MS = 50.0
CALLS = ("lookup", "profile", "timeline")
LABELS = {
    "lookup": "lookup by e-mail",
    "profile": "GET 360",
    "timeline": "timeline page",
    "sequence": "whole sequence",
}


# --------------------------------------------------------------------------- readers


def _reader_process(
    index: int,
    port: int,
    token: str,
    emails: list[str],
    sequences: int,
    threads: int,
    timeline_limit: int,
    warmup: int,
    seed: int,
    think_ms: float,
    barrier: Any,
    results: Any,
) -> None:
    """`threads` readers sharing this process's `sequences`; results go to the queue as one dict.
    With `think_ms`, each reader pauses before each request, outside the timed calls."""
    rng = random.Random(seed * 7919 + index)
    plan = [rng.choice(emails) for _ in range(sequences)]
    warm = [rng.choice(emails) for _ in range(warmup * threads)]
    lock = threading.Lock()
    cursor = [0]
    lat: dict[str, list[float]] = {k: [] for k in (*CALLS, "sequence")}
    errors: list[str] = []
    failed = [0]
    ready = threading.Barrier(threads + 1)
    go = threading.Event()

    def one(client: HttpClient, email: str, record: bool, pause: Pauses) -> None:
        pause()
        t0 = time.perf_counter()
        r = client.get("/api/profiles/lookup", params={"type": "email", "value": email})
        lookup = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"lookup {email}: HTTP {r.status_code} {r.text[:200]}")
        pid = r.json()["id"]
        pause()
        t0 = time.perf_counter()
        r = client.get(f"/api/profiles/{pid}")
        profile = time.perf_counter() - t0
        if r.status_code != 200:
            raise RuntimeError(f"360 {pid}: HTTP {r.status_code} {r.text[:200]}")
        pause()
        t0 = time.perf_counter()
        r = client.get(f"/api/profiles/{pid}/timeline", params={"limit": timeline_limit})
        timeline = time.perf_counter() - t0
        if r.status_code != 200 or not isinstance(r.json().get("events"), list):
            raise RuntimeError(f"timeline {pid}: HTTP {r.status_code} {r.text[:200]}")
        if record:
            with lock:
                lat["lookup"].append(lookup)
                lat["profile"].append(profile)
                lat["timeline"].append(timeline)
                lat["sequence"].append(lookup + profile + timeline)  # time waited, without the pauses

    def reader(n: int) -> None:
        pause = Pauses(think_ms, seed * 104_729 + index * 1000 + n)
        with HttpClient(port, {"Authorization": f"Bearer {token}"}) as client:
            for email in warm[n * warmup : (n + 1) * warmup]:
                try:
                    one(client, email, record=False, pause=Pauses(0, 0))
                except Exception as exc:
                    with lock:
                        failed[0] += 1
                        if len(errors) < 5:
                            errors.append(f"warm-up: {exc!r}")
            ready.wait(timeout=600)
            go.wait(timeout=600)
            while True:
                with lock:
                    k = cursor[0]
                    cursor[0] += 1
                if k >= len(plan):
                    return
                try:
                    one(client, plan[k], record=True, pause=pause)
                except Exception as exc:
                    with lock:
                        failed[0] += 1
                        if len(errors) < 5:
                            errors.append(repr(exc))

    workers = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(threads)]
    for w in workers:
        w.start()
    ready.wait(timeout=600)  # every reader has connected and warmed up
    barrier.wait(timeout=600)  # ... in every process
    start = time.monotonic()
    go.set()
    for w in workers:
        w.join(timeout=3600)
    end = time.monotonic()
    results.put({"index": index, "start": start, "end": end, "lat": lat, "failed": failed[0], "errors": errors})


@dataclass
class ReadResult:
    backend: str
    lat: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in (*CALLS, "sequence")})
    wall: float = 0.0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    customers: int = 0
    events: int = 0
    error: str | None = None
    #: CPU seconds the server process spent during the measured run (load-independent cost)
    server_cpu: float = 0.0
    warm_sequences: int = 0

    @property
    def cpu_ms_per_request(self) -> float:
        done = self.sequences + self.warm_sequences
        return 1000 * self.server_cpu / (3 * done) if done else 0.0

    def ms(self, call: str, q: float) -> float:
        return 1000 * percentile(self.lat[call], q)

    @property
    def sequences(self) -> int:
        return len(self.lat["sequence"])

    @property
    def requests_per_s(self) -> float:
        return 3 * self.sequences / self.wall if self.wall else 0.0

    @property
    def calls_met(self) -> bool:
        return all(self.ms(c, 0.99) < TARGET_P99_MS for c in CALLS)

    @property
    def sequence_met(self) -> bool:
        return self.ms("sequence", 0.99) < TARGET_P99_MS

    def line(self) -> str:
        if self.error:
            return f"{self.backend} ERROR {self.error}"
        parts = [self.backend]
        for c in (*CALLS, "sequence"):
            parts.append(f"{c} p50={self.ms(c, 0.5):.1f}ms p99={self.ms(c, 0.99):.1f}ms max={self.ms(c, 1.0):.1f}ms")
        parts.append(f"req/s={self.requests_per_s:.0f} sequences={self.sequences} failed={self.failed}")
        parts.append(f"server_cpu_ms_per_request={self.cpu_ms_per_request:.2f}")
        parts.append(f"target_calls={'MET' if self.calls_met else 'NOT-MET'}")
        parts.append(f"target_sequence={'MET' if self.sequence_met else 'NOT-MET'}")
        return " ".join(parts)


def drive(port: int, token: str, emails: list[str], args: argparse.Namespace) -> ReadResult:
    merged = drive_readers(_reader_process, port, token, emails, args)
    res = ReadResult("", wall=merged["wall"], failed=merged["failed"], errors=merged["errors"])
    for k, v in merged["lat"].items():
        res.lat[k].extend(v)
    return res


# --------------------------------------------------------------------------- one backend


def _token_and_emails(url: str, sample: int, seed: int) -> tuple[str, list[str]]:
    from omnijourney.access.service import create_token
    from omnijourney.store import db, migrate

    engine = db.create_engine(url)
    try:
        migrate.upgrade(engine)  # a kept world may predate newer migrations
        with db.write(engine) as conn:
            token = create_token(conn=conn, role="agent", name="bench-profile-read")
    finally:
        engine.dispose()
    return token, known_emails(url, sample, seed)


def run_backend(backend: str, args: argparse.Namespace, say: Any) -> ReadResult:
    from rich.markup import escape

    result = ReadResult(backend)
    workdir = Path(tempfile.mkdtemp(prefix=f"oj-bench-read-{backend}-"))
    pg: PgServer | None = None
    server: Server | None = None
    try:
        url, stats, pg = read_world(backend, args, workdir, "oj_bench_read", say)
        result.customers, result.events = stats.clusters, stats.events
        token, emails = _token_and_emails(url, args.sample, args.seed)
        server = Server(url, workdir, synchronous=args.sqlite_synchronous, pipeline=False, workers=args.workers)
        server.wait_healthy()
        say(
            f"server up on 127.0.0.1:{server.port} (--no-pipeline); {args.readers} readers in "
            f"{min(args.client_procs, args.readers)} processes, {args.requests:,} sequences over {len(emails):,} e-mails"
        )
        cpu_before = tree_cpu_seconds(server.proc.pid)
        measured = drive(server.port, token, emails, args)
        measured.server_cpu = tree_cpu_seconds(server.proc.pid) - cpu_before
        measured.warm_sequences = args.warmup * args.readers
        measured.backend, measured.customers, measured.events = backend, result.customers, result.events
        result = measured
        for e in result.errors[:5]:
            say(f"  reader error: {e}")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"[red]failed:[/red]\n{escape(traceback.format_exc())}")
        if server is not None:
            say(f"server log tail:\n{escape(server.log_tail())}")
    finally:
        if server is not None:
            server.stop()
        if pg is not None:
            pg.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--profiles", type=int, default=100_000, help="people in the population (default 100000)")
    p.add_argument("--events", type=int, default=1_000_000, help="events loaded and processed (default 1000000)")
    p.add_argument("--readers", type=int, default=50, help="concurrent readers (default 50)")
    p.add_argument(
        "--requests",
        type=int,
        default=5000,
        help="sequences (lookup + 360 + timeline = 3 requests each) in total (default 5000)",
    )
    p.add_argument(
        "--client-procs", type=int, default=2, help="processes the reader threads are spread over (default 2)"
    )
    p.add_argument("--workers", type=int, default=1, help="API server processes (serve --workers; default 1)")
    add_world_arguments(p)
    add_think_argument(p)
    p.add_argument("--timeline-limit", type=int, default=50, help="timeline page size (default 50, the API's)")
    p.add_argument("--warmup", type=int, default=2, help="untimed sequences per reader before the clock starts")
    p.add_argument("--sample", type=int, default=20_000, help="distinct e-mail addresses looked up (default 20000)")
    p.add_argument("--batch", type=int, default=5000, help="processing batch while preparing (default 5000)")
    p.add_argument("--seed", type=int, default=1, help="workload seed (same seed, same data and lookups)")
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
        help="SQLite synchronous pragma for the server (default FULL, the server's default)",
    )
    args = p.parse_args(argv)
    if min(args.profiles, args.events, args.readers, args.requests, args.client_procs, args.sample) < 1:
        p.error("sizes, --readers, --requests, --client-procs and --sample must be positive")
    if args.database_url and args.backend == "both":
        p.error("--database-url measures one database: choose its --backend")
    if args.think_ms < 0:
        p.error("--think-ms must be >= 0")
    if args.warmup < 0 or not 1 <= args.timeline_limit <= 500:
        p.error("--warmup must be >= 0 and --timeline-limit 1..500")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.table import Table

    args = parse_args(argv)
    console = make_console()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    console.print(
        f"[bold]profile read benchmark[/bold]: {args.profiles:,} people, {args.events:,} events, "
        f"{args.readers} readers, {args.requests:,} sequences, timeline limit {args.timeline_limit}, "
        f"think time {args.think_ms:g} ms (0: closed loop), "
        f"seed {args.seed}, {os.cpu_count()} CPUs"
    )
    results = []
    for backend in backends:
        console.rule(backend)
        results.append(run_backend(backend, args, lambda m, b=backend: console.print(f"[dim]{b}:[/dim] {m}")))

    table = Table(title=f"Customer 360 reads: {args.readers} concurrent readers (target p99 < {TARGET_P99_MS:.0f} ms)")
    for col in ("backend", "call", "count", "p50 ms", "p99 ms", "max ms", "req/s"):
        table.add_column(col, justify="left" if col in ("backend", "call") else "right")
    for r in results:
        if r.error:
            table.add_row(r.backend, "[red]ERROR[/red]", *["-"] * 5)
            continue
        for c in (*CALLS, "sequence"):
            p99 = r.ms(c, 0.99)
            colour = "green" if p99 < TARGET_P99_MS else "red"
            rate = r.requests_per_s if c == "sequence" else r.requests_per_s / 3
            table.add_row(
                r.backend,
                LABELS[c],
                f"{len(r.lat[c]):,}",
                f"{r.ms(c, 0.5):.1f}",
                f"[{colour}]{p99:.1f}[/{colour}]",
                f"{r.ms(c, 1.0):.1f}",
                f"{rate:,.0f}" if c != "sequence" else f"{rate:,.0f} (all calls)",
            )
    console.print(table)
    for r in results:
        if r.error:
            continue
        console.print(
            f"{r.backend}: {r.customers:,} customers over {r.events:,} events; {r.failed} failed sequences; "
            f"target p99 < {TARGET_P99_MS:.0f} ms per call: "
            f"{'[green]met[/green]' if r.calls_met else '[red]not met[/red]'}, for the whole sequence: "
            f"{'[green]met[/green]' if r.sequence_met else '[red]not met[/red]'}"
        )
    for r in results:
        print(r.line(), flush=True)
    return 0 if all(not r.error and r.failed == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

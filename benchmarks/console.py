"""Staff console latency: the search page and the customer 360 page under concurrent logged-in sessions.

For each backend this script

1. prepares a database as benchmarks/identity.py does (the same seeded population and
   event stream, loaded with `append_events` and fully processed with `run_until_idle`;
   not timed) and creates a console user (`agent` role) with `web.service.create_user`;
2. samples e-mail addresses the graph knows (seeded), so every search should find someone;
3. starts `omnijourney serve --no-pipeline` as a subprocess on a free loopback port (the
   log is fully processed, so only reads are measured);
4. runs --readers concurrent sessions (threads spread over --client-procs processes, one
   keep-alive HTTP connection each (`_common.HttpClient`) with its own cookie jar; a closed loop without pauses, or with
   `--think-ms`, a pause of that mean before each page, as people at a console work). Each
   session logs in through the login form (not timed), then repeats the agent's sequence:
   GET /console/search?q=<e-mail> (the results page), then GET /console/customers/{id} (the
   whole 360 page: profile, identifiers, consents, loyalty, orders, cart, suggestions and the
   first 30 timeline entries, rendered), --requests sequences in total;
5. before that, measures what each page costs the server: one session requests --cpu-requests
   search pages, then as many 360 pages, one at a time, and the server's CPU time (the process
   tree's user + system time from /proc, `_common.tree_cpu_seconds`) is divided by the count.
   This figure does not depend on the machine's load, unlike the latencies: with one server
   process (one core under the GIL) and 50 sessions, a page's p99 is roughly the queue of 50
   requests times their CPU cost;
6. prints p50/p99/max latency and requests/s for each page against the issue's targets
   (search p99 < 100 ms, 360 page p99 < 150 ms), the server CPU ms per request, and one plain
   line per backend.

World size: --profiles and --events (default 1 M people and 5 M events, the issue's size).
Preparing (load + process) dominates a run at that size, so --keep-dir DIR keeps the prepared
SQLite world and later runs of the same size and seed reuse it (newer migrations are applied).

It is a script, not a test: run `.venv/bin/python benchmarks/console.py --help`.
"""

from __future__ import annotations

import argparse
import os
import random
import re
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

TARGETS_MS = {"search": 100.0, "page": 150.0}
TARGET_P99_MS = 150.0  # the whole sequence is reported against the page's target
CALLS = ("search", "page")
LABELS = {
    "search": "search page (by e-mail)",
    "page": "customer 360 page",
    "sequence": "whole sequence",
}
PASSWORD = "bench-console-password"
USERNAME = "bench-agent"
_HREF = re.compile(r'href="/console/customers/(\d+)"')
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


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
    With `think_ms`, each session pauses before each page, outside the timed requests."""
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
        r = client.get("/console/search", params={"q": email})
        search = time.perf_counter() - t0
        found = _HREF.search(r.text) if r.status_code == 200 else None
        if found is None:
            raise RuntimeError(f"search {email}: HTTP {r.status_code}, no customer link")
        pid = found.group(1)
        pause()
        t0 = time.perf_counter()
        r = client.get(f"/console/customers/{pid}")
        page = time.perf_counter() - t0
        if r.status_code != 200 or 'data-testid="timeline"' not in r.text:
            raise RuntimeError(f"360 page {pid}: HTTP {r.status_code} {r.text[:200]}")
        if record:
            with lock:
                lat["search"].append(search)
                lat["page"].append(page)
                lat["sequence"].append(search + page)  # time waited, without the pauses

    def reader(n: int) -> None:
        pause = Pauses(think_ms, seed * 104_729 + index * 1000 + n)
        with HttpClient(port) as client:
            try:
                _log_in(client)
            except Exception as exc:
                with lock:
                    failed[0] += 1
                    errors.append(f"login: {exc!r}")
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
    #: server CPU ms per request of each page, measured one request at a time (load-independent)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def ms(self, call: str, q: float) -> float:
        return 1000 * percentile(self.lat[call], q)

    @property
    def sequences(self) -> int:
        return len(self.lat["sequence"])

    @property
    def requests_per_s(self) -> float:
        return len(CALLS) * self.sequences / self.wall if self.wall else 0.0

    @property
    def calls_met(self) -> bool:
        return all(self.ms(c, 0.99) < TARGETS_MS[c] for c in CALLS)

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
        parts += [f"server_cpu_ms_{c}={self.cpu_ms.get(c, float('nan')):.2f}" for c in CALLS]
        parts.append(f"target_calls={'MET' if self.calls_met else 'NOT-MET'}")
        parts.append(f"target_sequence={'MET' if self.sequence_met else 'NOT-MET'}")
        return " ".join(parts)


def drive(port: int, emails: list[str], args: argparse.Namespace) -> ReadResult:
    merged = drive_readers(_reader_process, port, "", emails, args)
    res = ReadResult("", wall=merged["wall"], failed=merged["failed"], errors=merged["errors"])
    for k, v in merged["lat"].items():
        res.lat[k].extend(v)
    return res


def _log_in(client: Any) -> None:
    form = client.get("/console/login")
    m = _CSRF.search(form.text)
    if m is None:
        raise RuntimeError(f"login form: HTTP {form.status_code}")
    r = client.post("/console/login", data={"username": USERNAME, "password": PASSWORD, "csrf_token": m.group(1)})
    if r.status_code != 303:
        raise RuntimeError(f"login: HTTP {r.status_code} {r.text[:200]}")


def measure_cpu(server: Server, emails: list[str], count: int) -> dict[str, float]:
    """Server CPU ms per search page and per 360 page: `count` of each, one at a time, one session."""
    rng = random.Random(4242)
    picked = [rng.choice(emails) for _ in range(count)]
    out: dict[str, float] = {}
    with HttpClient(server.port) as client:
        _log_in(client)
        ids = []
        for email in picked[: min(20, count)]:  # warm-up (imports, caches), not counted
            found = _HREF.search(client.get("/console/search", params={"q": email}).text)
            if found:
                client.get(f"/console/customers/{found.group(1)}")
        before = tree_cpu_seconds(server.proc.pid)
        for email in picked:
            found = _HREF.search(client.get("/console/search", params={"q": email}).text)
            if found is None:
                raise RuntimeError(f"search {email}: no customer link")
            ids.append(found.group(1))
        out["search"] = 1000 * (tree_cpu_seconds(server.proc.pid) - before) / count
        before = tree_cpu_seconds(server.proc.pid)
        for pid in ids:
            if client.get(f"/console/customers/{pid}").status_code != 200:
                raise RuntimeError(f"360 page {pid} failed")
        out["page"] = 1000 * (tree_cpu_seconds(server.proc.pid) - before) / count
    return out


def compare_cpu(url: str, workdir: Path, emails: list[str], args: argparse.Namespace, say: Any) -> None:
    """Server CPU per request of this checkout against `--compare-src`, interleaved.

    On a shared machine the CPU per request of the same code moves with the load (by 2x within
    minutes here), so two runs one after the other do not compare. Both servers are started on
    the same database; one session each gets the same e-mails in alternating blocks, so both see
    the same load, and only the pair is compared."""
    servers: dict[str, Server] = {}
    clients: dict[str, Any] = {}
    cpu = {name: {"search": 0.0, "page": 0.0} for name in ("compared", "this")}
    try:
        for name, src in (("compared", args.compare_src), ("this", None)):
            before = os.environ.get("PYTHONPATH")
            if src:  # the other checkout's package first on the server's path
                os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (str(Path(src).resolve()), before) if x)
            try:
                (workdir / name).mkdir(exist_ok=True)
                servers[name] = Server(url, workdir / name, synchronous=args.sqlite_synchronous, pipeline=False)
            finally:
                if before is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = before
        for name, server in servers.items():
            server.wait_healthy()
            clients[name] = HttpClient(server.port)
            _log_in(clients[name])
        rng = random.Random(4242)

        def block(name: str, picked: list[str], record: bool) -> None:
            client, pid = clients[name], servers[name].proc.pid
            start, ids = tree_cpu_seconds(pid), []
            for email in picked:
                found = _HREF.search(client.get("/console/search", params={"q": email}).text)
                if found is None:
                    raise RuntimeError(f"search {email}: no customer link")
                ids.append(found.group(1))
            searched = tree_cpu_seconds(pid)
            for profile_id in ids:
                if client.get(f"/console/customers/{profile_id}").status_code != 200:
                    raise RuntimeError(f"360 page {profile_id} failed")
            if record:
                cpu[name]["search"] += searched - start
                cpu[name]["page"] += tree_cpu_seconds(pid) - searched

        warm = [rng.choice(emails) for _ in range(30)]
        for name in servers:
            block(name, warm, record=False)
        size, done = 40, 0
        while done < args.cpu_requests:
            picked = [rng.choice(emails) for _ in range(min(size, args.cpu_requests - done))]
            for name in servers if (done // size) % 2 == 0 else list(servers)[::-1]:
                block(name, picked, record=True)
            done += len(picked)
        for name, label in (("compared", f"--compare-src {args.compare_src}"), ("this", "this checkout")):
            say(
                f"server CPU per request, interleaved ({done} each), {label}: "
                f"search {1000 * cpu[name]['search'] / done:.2f} ms, 360 page {1000 * cpu[name]['page'] / done:.2f} ms"
            )
    finally:
        for client in clients.values():
            client.close()
        for server in servers.values():
            server.stop()


def _console_user(url: str) -> None:
    from omnijourney.store import db, migrate
    from omnijourney.store.base import utcnow
    from omnijourney.web.service import create_user, user_by_name

    engine = db.create_engine(url)
    try:
        migrate.upgrade(engine)  # a kept world may predate newer migrations
        with db.write(engine) as conn:
            if user_by_name(conn=conn, username=USERNAME) is None:
                create_user(conn=conn, username=USERNAME, role="agent", password=PASSWORD, now=utcnow())
    finally:
        engine.dispose()


def run_backend(backend: str, args: argparse.Namespace, say: Any) -> ReadResult:
    from rich.markup import escape

    result = ReadResult(backend)
    workdir = Path(tempfile.mkdtemp(prefix=f"oj-bench-console-{backend}-"))
    pg: PgServer | None = None
    server: Server | None = None
    try:
        url, stats, pg = read_world(backend, args, workdir, "oj_bench_console", say)
        result.customers, result.events = stats.clusters, stats.events
        _console_user(url)
        emails = known_emails(url, args.sample, args.seed)
        if args.compare_src:
            compare_cpu(url, workdir, emails, args, say)
            return result
        server = Server(url, workdir, synchronous=args.sqlite_synchronous, pipeline=False, workers=args.workers)
        server.wait_healthy()
        cpu = measure_cpu(server, emails, args.cpu_requests) if args.cpu_requests else {}
        if cpu:
            say(f"server CPU per request: search {cpu['search']:.2f} ms, 360 page {cpu['page']:.2f} ms")
        say(
            f"server up on 127.0.0.1:{server.port} (--no-pipeline); {args.readers} readers in "
            f"{min(args.client_procs, args.readers)} processes, {args.requests:,} sequences over {len(emails):,} e-mails"
        )
        measured = drive(server.port, emails, args)
        measured.cpu_ms = cpu
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
    p.add_argument("--profiles", type=int, default=1_000_000, help="people in the population (default 1000000)")
    p.add_argument("--events", type=int, default=5_000_000, help="events loaded and processed (default 5000000)")
    p.add_argument("--readers", type=int, default=50, help="concurrent readers (default 50)")
    p.add_argument(
        "--requests",
        type=int,
        default=5000,
        help="sequences (search page + 360 page = 2 requests each) in total (default 5000)",
    )
    p.add_argument(
        "--client-procs", type=int, default=2, help="processes the reader threads are spread over (default 2)"
    )
    p.add_argument("--workers", type=int, default=1, help="API server processes (serve --workers; default 1)")
    p.add_argument(
        "--cpu-requests",
        type=int,
        default=200,
        help="requests of each page, one at a time, for the server CPU per request (0: skip; default 200)",
    )
    add_world_arguments(p)
    add_think_argument(p)
    p.add_argument("--timeline-limit", type=int, default=30, help=argparse.SUPPRESS)
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
        "--compare-src",
        default=None,
        metavar="DIR",
        help="instead of the concurrent run: the server CPU per request of this checkout and of the omnijourney\n"
        "package in DIR (e.g. another worktree's src), measured interleaved (--cpu-requests of each page)",
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
    if args.compare_src and not (Path(args.compare_src) / "omnijourney").is_dir():
        p.error("--compare-src needs a directory holding the omnijourney package (a checkout's src)")
    if args.think_ms < 0:
        p.error("--think-ms must be >= 0")
    if args.warmup < 0 or args.cpu_requests < 0 or not 1 <= args.timeline_limit <= 500:
        p.error("--warmup must be >= 0 and --timeline-limit 1..500")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.table import Table

    args = parse_args(argv)
    console = make_console()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    console.print(
        f"[bold]staff console benchmark[/bold]: {args.profiles:,} people, {args.events:,} events, "
        f"{args.readers} sessions, {args.requests:,} sequences, "
        f"think time {args.think_ms:g} ms (0: closed loop), "
        f"seed {args.seed}, {os.cpu_count()} CPUs"
    )
    results = []
    for backend in backends:
        console.rule(backend)
        results.append(run_backend(backend, args, lambda m, b=backend: console.print(f"[dim]{b}:[/dim] {m}")))
    if args.compare_src:  # only the interleaved CPU figures, printed above
        return 0 if all(not r.error for r in results) else 1

    table = Table(
        title=f"Staff console: {args.readers} concurrent sessions (targets: search p99 < 100 ms, 360 page < 150 ms)"
    )
    for col in ("backend", "call", "count", "p50 ms", "p99 ms", "max ms", "req/s", "server CPU ms/req"):
        table.add_column(col, justify="left" if col in ("backend", "call") else "right")
    for r in results:
        if r.error:
            table.add_row(r.backend, "[red]ERROR[/red]", *["-"] * 6)
            continue
        for c in (*CALLS, "sequence"):
            p99 = r.ms(c, 0.99)
            colour = "green" if p99 < TARGETS_MS.get(c, TARGET_P99_MS) else "red"
            rate = r.requests_per_s if c == "sequence" else r.requests_per_s / len(CALLS)
            table.add_row(
                r.backend,
                LABELS[c],
                f"{len(r.lat[c]):,}",
                f"{r.ms(c, 0.5):.1f}",
                f"[{colour}]{p99:.1f}[/{colour}]",
                f"{r.ms(c, 1.0):.1f}",
                f"{rate:,.0f}" if c != "sequence" else f"{rate:,.0f} (all calls)",
                f"{r.cpu_ms[c]:.2f}" if c in r.cpu_ms else "-",
            )
    console.print(table)
    for r in results:
        if r.error:
            continue
        console.print(
            f"{r.backend}: {r.customers:,} customers over {r.events:,} events; {r.failed} failed sequences; "
            "targets (search p99 < 100 ms, 360 page p99 < 150 ms): "
            f"{'[green]met[/green]' if r.calls_met else '[red]not met[/red]'}; whole sequence < 150 ms: "
            f"{'[green]met[/green]' if r.sequence_met else '[red]not met[/red]'}"
        )
    for r in results:
        print(r.line(), flush=True)
    return 0 if all(not r.error and r.failed == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Event-to-timeline freshness under sustained ingestion load.

For each backend this script

1. prepares a database as benchmarks/identity.py does, with a smaller default population
   (--profiles people, --events events loaded and processed before the server starts, so
   the identity graph is not empty; not timed; --events 0 starts from an empty log), and
   creates an `agent` API token;
2. starts `omnijourney serve` (pipeline on, as deployed) on a free loopback port;
3. sends an identify call for a probe user and waits until the pipeline has resolved it;
4. drives steady background load: --clients processes, each with --connections keep-alive
   connections, POST /v1/batch with --batch-size messages from the same generated
   population (new message ids), paced (open loop) to --rate events/s in total for
   --duration seconds (bodies pre-built before the clock starts; 429/503 retried after
   Retry-After);
5. meanwhile, every --probe-interval-ms, sends one probe event (a track call for the probe
   user, in its own /v1/batch request) and polls GET /api/profiles/{id}/timeline?limit=1
   every --poll-ms until the probe is the newest entry (at most --probe-timeout seconds);
   freshness is the time from sending the probe to seeing it on the timeline;
6. prints p50/p99/max freshness against the issue's target (p99 < 1 s), the background
   rate achieved, the processing lag left when the load stopped and one plain line per
   backend.

Everything talks to 127.0.0.1 only. It is a script, not a test: run
`.venv/bin/python benchmarks/freshness.py --help`.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import math
import multiprocessing as mp
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import (
    CHUNK,
    PgServer,
    Server,
    World,
    make_console,
    percentile,
    prepare_database,
    prepare_processed,
)

TARGET_P99_S = 1.0
MAX_ATTEMPTS = 20
PROBE_SOURCE = "web"


# --------------------------------------------------------------------------- background load


def _bodies(
    index: int, seed: int, profiles: int, events: int, batch_size: int, write_keys: dict[str, str]
) -> list[tuple[str, bytes, int]]:
    """This client's request bodies: its own stream of the World, one source per request."""
    world = World(seed, profiles, max(events, 1))
    pending: dict[str, list[dict[str, Any]]] = {k: [] for k in write_keys}
    out: list[tuple[str, bytes, int]] = []
    made = 0
    c = 0
    while made < events:
        for key, _when, msg in world.chunk(c, CHUNK, stream=1 + index):
            if made >= events:
                break
            pending[key].append(msg)
            made += 1
            if len(pending[key]) == batch_size:
                out.append((write_keys[key], orjson.dumps({"batch": pending[key]}), batch_size))
                pending[key] = []
        c += 1
    for key, msgs in pending.items():
        if msgs:
            out.append((write_keys[key], orjson.dumps({"batch": msgs}), len(msgs)))
    return out


def _load_client(
    index: int,
    port: int,
    write_keys: dict[str, str],
    seed: int,
    profiles: int,
    events: int,
    batch_size: int,
    rate: float,
    duration: float,
    connections: int,
    barrier: Any,
    results: Any,
) -> None:
    """One paced client: body j leaves when the events before it are due at `rate` events/s.

    `connections` keep-alive connections (one thread each) take the bodies in order, so the
    offered rate holds while fewer than `connections` requests are slow at the same time.
    """
    bodies = _bodies(index, seed, profiles, events, batch_size, write_keys)
    auth = {k: "Basic " + base64.b64encode(f"{k}:".encode()).decode() for k in write_keys.values()}
    due_at: list[float] = []
    total = 0
    for _, _, n in bodies:
        due_at.append(total / rate)
        total += n
    lock = threading.Lock()
    nxt = [0]
    stats = {"accepted": 0, "retries": 0, "conn_errors": 0, "failed": 0, "max_behind": 0.0}
    latencies: list[float] = []
    errors: list[str] = []

    def note(key: str, n: int = 1, error: str | None = None) -> None:
        with lock:
            stats[key] += n
            if error and len(errors) < 5:
                errors.append(error)

    def send(conn: http.client.HTTPConnection, key: str, body: bytes, n: int) -> http.client.HTTPConnection:
        headers = {"Content-Type": "application/json", "Authorization": auth[key], "Connection": "keep-alive"}
        for _attempt in range(MAX_ATTEMPTS):
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/batch", body, headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                note("conn_errors", error=f"connection: {exc!r}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                time.sleep(0.2)
                continue
            with lock:
                latencies.append(time.perf_counter() - t0)
            if resp.status == 200:
                note("accepted", int(orjson.loads(data).get("accepted", n)))
                return conn
            if resp.status in (429, 503):
                note("retries")
                with contextlib.suppress(TypeError, ValueError):
                    time.sleep(min(float(resp.getheader("Retry-After") or 1), 5.0))
                continue
            note("failed", n, f"HTTP {resp.status}: {data[:300]!r}")
            return conn
        note("failed", n)
        return conn

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while True:
                with lock:
                    j = nxt[0]
                    nxt[0] += 1
                if j >= len(bodies):
                    return
                key, body, n = bodies[j]
                due = start + due_at[j]
                now = time.monotonic()
                if now < due:
                    time.sleep(due - now)
                else:
                    with lock:
                        stats["max_behind"] = max(stats["max_behind"], now - due)
                if time.monotonic() > hard_stop:  # bounded even if the server stalls
                    note("failed", n)
                    continue
                conn = send(conn, key, body, n)
        finally:
            conn.close()

    barrier.wait(timeout=900)
    start = time.monotonic()
    hard_stop = start + duration + 30
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration + 120)
    end = time.monotonic()
    results.put(
        {
            "index": index,
            "start": start,
            "end": end,
            "sent": total,
            "latencies": latencies,
            "errors": errors,
            **stats,
        }
    )


# --------------------------------------------------------------------------- probes


def _iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class Prober:
    """Sends probe events for one user and watches its timeline, over keep-alive httpx clients."""

    def __init__(self, port: int, write_key: str, token: str, seed: int) -> None:
        import httpx

        base = f"http://127.0.0.1:{port}"
        self.ingest = httpx.Client(base_url=base, auth=(write_key, ""), timeout=30)
        self.api = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        self.write_key = write_key
        self.user_id = f"freshness-probe-{seed}-{os.getpid()}"
        self.seed = seed
        self.profile_id: int | None = None

    def close(self) -> None:
        self.ingest.close()
        self.api.close()

    def _send(self, message: dict[str, Any]) -> None:
        r = self.ingest.post("/v1/batch", json={"batch": [message], "sentAt": _iso_now()})
        if r.status_code != 200:
            raise RuntimeError(f"probe not accepted: HTTP {r.status_code} {r.text[:200]}")

    def register(self, timeout: float) -> int:
        """Identify the probe user and wait until the pipeline has given it a profile."""
        self._send(
            {
                "type": "identify",
                "userId": self.user_id,
                "messageId": f"{self.user_id}-identify",
                "timestamp": _iso_now(),
                "traits": {"first_name": "Freshness", "last_name": "Probe"},
            }
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.api.get("/api/profiles/lookup", params={"type": "user_id", "value": self.user_id})
            if r.status_code == 200:
                self.profile_id = int(r.json()["id"])
                return self.profile_id
            time.sleep(0.05)
        raise RuntimeError(f"the probe user was not resolved within {timeout:.0f}s")

    def run(self, *, duration: float, interval: float, poll: float, timeout: float, max_probes: int) -> ProbeRun:
        """Send a probe every `interval` s for `duration` s (a sender thread) while polling the timeline.

        Probes are sent one after another, each after the previous one was acknowledged, so
        they enter the log in order and the pipeline applies them in order: when the newest
        timeline entry is probe k, every probe up to k is visible, and each is stamped with
        the time it was first seen. Freshness = first seen - sent (just before the POST).
        """
        import httpx

        out = ProbeRun()
        sent_at: dict[int, float] = {}
        failed: set[int] = set()
        done = threading.Event()
        start = time.monotonic()

        def sender() -> None:
            with httpx.Client(base_url=self.ingest.base_url, auth=(self.write_key, ""), timeout=30) as client:
                for k in range(max_probes):
                    due = start + k * interval
                    now = time.monotonic()
                    if due - start >= duration:
                        break
                    if now < due:
                        time.sleep(due - now)
                    msg = {
                        "type": "track",
                        "event": "Freshness Probe",
                        "userId": self.user_id,
                        "messageId": f"{self.user_id}-{k}",
                        "timestamp": _iso_now(),
                        "properties": {"probe": k},
                    }
                    t0 = time.perf_counter()
                    sent_at[k] = t0
                    try:
                        r = client.post("/v1/batch", json={"batch": [msg], "sentAt": _iso_now()})
                        if r.status_code != 200:
                            raise RuntimeError(f"HTTP {r.status_code} {r.text[:200]}")
                    except Exception as exc:
                        failed.add(k)
                        if len(out.errors) < 5:
                            out.errors.append(f"probe {k} not accepted: {exc!r}")
                        continue
                    out.acks.append(time.perf_counter() - t0)
            done.set()

        thread = threading.Thread(target=sender, name="probe-sender", daemon=True)
        thread.start()
        seen_upto = -1
        last_change = time.perf_counter()
        while True:
            try:
                r = self.api.get(f"/api/profiles/{self.profile_id}/timeline", params={"limit": 1})
                items = r.json().get("events") or [] if r.status_code == 200 else []
            except (httpx.HTTPError, ValueError) as exc:
                items = []
                if len(out.errors) < 5:
                    out.errors.append(f"timeline poll: {exc!r}")
            now = time.perf_counter()
            newest = (items[0].get("properties") or {}).get("probe") if items else None
            if isinstance(newest, int) and newest > seen_upto:
                for j in range(seen_upto + 1, newest + 1):
                    if j in sent_at and j not in failed:
                        out.fresh.append(now - sent_at[j])
                seen_upto = newest
                last_change = now
            if done.is_set():
                if out.lag_at_stop is None:
                    with contextlib.suppress(httpx.HTTPError, ValueError):
                        out.lag_at_stop = self.api.get("/ready").json().get("processing_lag")
                pending = [k for k in sent_at if k > seen_upto and k not in failed]
                if not pending or now - max(last_change, sent_at[max(pending)]) > timeout:
                    break
            elif now - last_change > timeout + duration:  # the sender stalled: stay bounded
                break
            time.sleep(poll)
        done.wait(timeout=60)
        thread.join(timeout=5)
        out.probes = len(sent_at)
        out.failed = len(failed)
        out.lost = len([k for k in sent_at if k > seen_upto and k not in failed])
        return out


@dataclass
class ProbeRun:
    probes: int = 0
    failed: int = 0
    lost: int = 0
    fresh: list[float] = field(default_factory=list)
    acks: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: processing lag when the last probe had been sent
    lag_at_stop: int | None = None


# --------------------------------------------------------------------------- one backend


@dataclass
class FreshResult:
    backend: str
    fresh: list[float] = field(default_factory=list)
    acks: list[float] = field(default_factory=list)
    timeouts: int = 0
    probes: int = 0
    offered: float = 0.0
    sent: int = 0
    accepted: int = 0
    failed: int = 0
    retries: int = 0
    load_wall: float = 0.0
    load_latencies: list[float] = field(default_factory=list)
    max_behind: float = 0.0
    lag_stop: int | None = None
    lag_end: int | None = None
    drain_s: float | None = None
    errors: list[str] = field(default_factory=list)
    error: str | None = None

    def ms(self, values: list[float], q: float) -> float:
        return 1000 * percentile(values, q)

    @property
    def achieved(self) -> float:
        return self.accepted / self.load_wall if self.load_wall else 0.0

    @property
    def p99_s(self) -> float:
        # a probe that never showed up counts as slower than every probe that did
        values = self.fresh + [math.inf] * self.timeouts
        return percentile(values, 0.99)

    @property
    def met(self) -> bool:
        return self.probes > 0 and self.p99_s < TARGET_P99_S

    def line(self) -> str:
        if self.error:
            return f"{self.backend} ERROR {self.error}"
        return (
            f"{self.backend} freshness p50={self.ms(self.fresh, 0.5):.0f}ms p99={1000 * self.p99_s:.0f}ms "
            f"max={self.ms(self.fresh, 1.0):.0f}ms probes={self.probes} timeouts={self.timeouts} "
            f"ack_p50={self.ms(self.acks, 0.5):.1f}ms load={self.achieved:.0f}/{self.offered:.0f} ev/s "
            f"lag_stop={self.lag_stop} lag_end={self.lag_end} target={'MET' if self.met else 'NOT-MET'}"
        )


def _token(url: str) -> str:
    from omnijourney.access.service import create_token
    from omnijourney.store import db

    engine = db.create_engine(url)
    try:
        with db.write(engine) as conn:
            return create_token(conn=conn, role="agent", name="bench-freshness")
    finally:
        engine.dispose()


def _collect(results: Any, procs: list[Any], n: int, timeout: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n:
        try:
            out.append(results.get(timeout=1.0))
        except queue.Empty:
            if time.monotonic() > deadline:
                raise RuntimeError("load clients did not finish in time") from None
            if all(not p.is_alive() for p in procs) and results.empty():
                raise RuntimeError("a load client died; see its traceback above") from None
    return out


def run_backend(backend: str, args: argparse.Namespace, say: Any) -> FreshResult:
    from rich.markup import escape

    result = FreshResult(backend, offered=args.rate)
    workdir = Path(tempfile.mkdtemp(prefix=f"oj-bench-fresh-{backend}-"))
    pg: PgServer | None = None
    server: Server | None = None
    prober: Prober | None = None
    procs: list[Any] = []
    try:
        if backend == "sqlite":
            url = f"sqlite:///{workdir / 'fresh.db'}"
        else:
            say("starting PostgreSQL" if not args.pg_url else "using the PostgreSQL server at --pg-url")
            pg = PgServer(args.pg_url)
            url = pg.fresh_database("oj_bench_fresh")
        if args.events:
            say(f"preloading {args.events:,} events for {args.profiles:,} people (load and process; not timed)")
            sources, _, _ = prepare_processed(
                url, profiles=args.profiles, events=args.events, seed=args.seed, batch=5000, say=say
            )
        else:
            sources = prepare_database(url)
        token = _token(url)
        server = Server(url, workdir, synchronous=args.sqlite_synchronous, pipeline=True)
        server.wait_healthy()
        prober = Prober(server.port, sources[PROBE_SOURCE].write_key, token, args.seed)
        pid = prober.register(timeout=60)
        say(f"server up on 127.0.0.1:{server.port} (pipeline on); probe user resolved to profile {pid}")

        total = int(args.rate * args.duration)
        per_client = [total // args.clients + (1 if i < total % args.clients else 0) for i in range(args.clients)]
        ctx = mp.get_context("spawn")
        barrier = ctx.Barrier(args.clients + 1)
        results = ctx.Queue()
        write_keys = {k: s.write_key for k, s in sources.items()}
        procs = [
            ctx.Process(
                target=_load_client,
                args=(
                    i,
                    server.port,
                    write_keys,
                    args.seed,
                    max(args.profiles, 1),
                    per_client[i],
                    args.batch_size,
                    args.rate / args.clients,
                    args.duration,
                    args.connections,
                    barrier,
                    results,
                ),
                name=f"bench-load-{i}",
                daemon=True,
            )
            for i in range(args.clients)
        ]
        for p in procs:
            p.start()
        say(f"building {total:,} background events in {args.clients} clients")
        barrier.wait(timeout=900)
        say(f"load running: {args.rate:,.0f} ev/s for {args.duration:.0f}s; probing every {args.probe_interval_ms} ms")
        run = prober.run(
            duration=args.duration,
            interval=args.probe_interval_ms / 1000,
            poll=args.poll_ms / 1000,
            timeout=args.probe_timeout,
            max_probes=args.max_probes,
        )
        result.probes, result.timeouts = run.probes, run.lost + run.failed
        result.fresh, result.acks = run.fresh, run.acks
        result.errors.extend(run.errors)
        result.lag_stop = run.lag_at_stop

        out = _collect(results, procs, args.clients, timeout=args.duration + 120)
        result.lag_end = server.ready().get("processing_lag")
        t0 = time.monotonic()
        while time.monotonic() - t0 < args.drain_timeout:
            lag = server.ready().get("processing_lag")
            if lag == 0:
                result.drain_s = time.monotonic() - t0
                break
            time.sleep(0.2)
        result.load_wall = max(r["end"] for r in out) - min(r["start"] for r in out)
        for r in out:
            result.sent += r["sent"]
            result.accepted += r["accepted"]
            result.failed += r["failed"]
            result.retries += r["retries"]
            result.load_latencies.extend(r["latencies"])
            result.max_behind = max(result.max_behind, r["max_behind"])
            result.errors.extend(r["errors"])
        for e in result.errors[:5]:
            say(f"  error: {e}")
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        say(f"[red]failed:[/red]\n{escape(traceback.format_exc())}")
        if server is not None:
            say(f"server log tail:\n{escape(server.log_tail())}")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        if prober is not None:
            prober.close()
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
    p.add_argument("--profiles", type=int, default=20_000, help="people in the population (default 20000)")
    p.add_argument(
        "--events",
        type=int,
        default=200_000,
        help="events preloaded and processed before the server starts (default 200000; 0 for none)",
    )
    p.add_argument("--rate", type=float, default=2000.0, help="background load in events/s, all clients (default 2000)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of background load and probing (default 20)")
    p.add_argument("--clients", type=int, default=2, help="background client processes (default 2)")
    p.add_argument("--batch-size", type=int, default=100, help="messages per background request (default 100)")
    p.add_argument("--connections", type=int, default=4, help="keep-alive connections per client process (default 4)")
    p.add_argument("--probe-interval-ms", type=int, default=100, help="one probe every this many ms (default 100)")
    p.add_argument("--poll-ms", type=int, default=10, help="timeline poll interval while waiting (default 10)")
    p.add_argument("--probe-timeout", type=float, default=10.0, help="a probe not seen after this many s is lost")
    p.add_argument("--max-probes", type=int, default=10_000, help="upper bound on probes (default 10000)")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="after the load, wait at most this long for lag 0")
    p.add_argument("--seed", type=int, default=1, help="workload seed")
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
    if args.events < 0 or args.profiles < 1 or args.rate <= 0 or args.duration <= 0:
        p.error("--profiles, --rate and --duration must be positive, --events >= 0")
    if min(args.clients, args.connections, args.batch_size, args.probe_interval_ms, args.poll_ms, args.max_probes) < 1:
        p.error("--clients, --connections, --batch-size, --probe-interval-ms, --poll-ms, --max-probes must be positive")
    if args.probe_timeout <= 0 or args.drain_timeout < 0:
        p.error("--probe-timeout must be positive and --drain-timeout >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.table import Table

    args = parse_args(argv)
    console = make_console()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    console.print(
        f"[bold]freshness benchmark[/bold]: preload {args.events:,} events / {args.profiles:,} people, "
        f"background {args.rate:,.0f} ev/s for {args.duration:.0f}s from {args.clients} clients "
        f"(batches of {args.batch_size}), a probe every {args.probe_interval_ms} ms, poll {args.poll_ms} ms, "
        f"seed {args.seed}, {os.cpu_count()} CPUs"
    )
    results = []
    for backend in backends:
        console.rule(backend)
        results.append(run_backend(backend, args, lambda m, b=backend: console.print(f"[dim]{b}:[/dim] {m}")))

    table = Table(title=f"event-to-timeline freshness under load (target p99 < {TARGET_P99_S * 1000:.0f} ms)")
    cols = (
        "backend",
        "probes",
        "lost",
        "p50 ms",
        "p99 ms",
        "max ms",
        "ack p50 ms",
        "load ev/s (offered)",
        "batch p99 ms",
        "lag at stop",
        "lag at end",
        "drained in s",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "backend" else "right")
    for r in results:
        if r.error:
            table.add_row(r.backend, "[red]ERROR[/red]", *["-"] * (len(cols) - 2))
            continue
        colour = "green" if r.met else "red"
        table.add_row(
            r.backend,
            str(r.probes),
            str(r.timeouts),
            f"{r.ms(r.fresh, 0.5):.0f}",
            f"[{colour}]{1000 * r.p99_s:.0f}[/{colour}]",
            f"{r.ms(r.fresh, 1.0):.0f}",
            f"{r.ms(r.acks, 0.5):.1f}",
            f"{r.achieved:,.0f} ({r.offered:,.0f})",
            f"{r.ms(r.load_latencies, 0.99):.0f}",
            "-" if r.lag_stop is None else str(r.lag_stop),
            "-" if r.lag_end is None else str(r.lag_end),
            "-" if r.drain_s is None else f"{r.drain_s:.1f}",
        )
    console.print(table)
    for r in results:
        if r.error:
            continue
        console.print(
            f"{r.backend}: {r.accepted:,}/{r.sent:,} background events accepted, {r.failed} failed, "
            f"{r.retries} 429/503 retries, clients at most {r.max_behind:.1f}s behind schedule; "
            f"target p99 < {TARGET_P99_S * 1000:.0f} ms: {'[green]met[/green]' if r.met else '[red]not met[/red]'}"
        )
    for r in results:
        print(r.line(), flush=True)
    return 0 if all(not r.error and r.probes > 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

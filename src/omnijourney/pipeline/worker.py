"""Runs the processing stage continuously: in a child process of the API server (what
`omnijourney serve` does), as a thread of the API process (tests, `serve --pipeline-thread`),
or alone (`omnijourney worker`, for scale-out)."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from omnijourney.config import ENV_PREFIX
from omnijourney.ingest import service as ingest_service
from omnijourney.pipeline import service
from omnijourney.pipeline.service import Handler
from omnijourney.store import db, dialect

log = logging.getLogger(__name__)


#: allocations between the cyclic garbage collector's youngest-generation runs while processing
#: (Python's default is 700). A step allocates a few objects per event and identifier and keeps
#: most of them until it ends, so with the default the collector ran every few events and
#: re-scanned the growing heap: about a quarter of the step's CPU in the identity benchmark.
GC_GEN0_THRESHOLD = 50_000


@contextlib.contextmanager
def fewer_collections(gen0: int = GC_GEN0_THRESHOLD) -> Iterator[None]:
    """Collect garbage cycles less often while processing (the threshold is process-wide)."""
    old = gc.get_threshold()
    gc.set_threshold(max(gen0, old[0]), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def run_until_idle(engine: sa.Engine, handlers: Sequence[Handler], *, batch: int = 2000, rebuild: bool = False) -> int:
    """Process everything stored so far; returns the number of events processed.

    `rebuild`: this process replays the log after a reset, alone (see `service.process_step`).
    """
    total = 0
    with fewer_collections():
        while True:
            with db.write(engine) as conn:
                n = service.process_step(conn=conn, handlers=handlers, limit=batch, rebuild=rebuild)
            if n == 0:
                return total
            total += n


@dataclass(frozen=True)
class IngestFirst:
    """How a processing stage on a single-writer database (SQLite) leaves the write lock to ingestion.

    A processing step holds the database's one write lock for as long as its handlers run
    (identity and profiles take about a millisecond per event), and while it does, no
    ingest group can commit: a 2,000-event step stalled every ingest request for seconds.
    Collect must not wait for Process (docs/ARCHITECTURE.md), so a worker with this policy

    * sizes its steps to last about `step_seconds` (from the time per event it measures);
    * runs flat out while it keeps up: when the backlog takes at most `catch_up_seconds`
      to process, or nothing new arrived since its last step;
    * otherwise (a burst it cannot keep up with) pauses after each step so that it holds
      the lock for `min_share` of the time, rising linearly to all of it as the backlog
      approaches `full_share_seconds` of processing or the lag approaches `max_lag` (where
      ingestion starts answering 503 anyway), whichever comes first;
    * but never less than `keep_up_margin` times the share it needs to keep up with the rate
      events arrive at: pacing may slow the catching up on a backlog, never let it grow.

    The backlog in seconds matters for freshness: with the share rising only towards
    `max_lag` (2 M events), a steady 2,000 events/s against a stage that processes ~7,000/s
    flat out left it at ~26 % of the lock, below the arrival rate, and the timeline fell
    ever further behind (`benchmarks/freshness.py --rate 2000`: p50 17 s; with the backlog
    bound of 3 s, p50 2.6 s, and at 1,000 events/s p99 0.38 s).

    The keep-up floor closes a trap the shares alone leave: under steady load a slow step could
    push the backlog past `catch_up_seconds`, where the share fell to about half, below what the
    arrival rate needed; the backlog then settled there for good. And a backlog of a few seconds
    is a stage keeping up, not a burst: flat out below 3 s of it (it was 1 s), the share rising
    to all of the lock at 6 s. Measured in `benchmarks/README.md` (freshness).

    Processing stays ordered and exactly-once; only its pace changes.
    """

    step_seconds: float = 0.1
    catch_up_seconds: float = 3.0
    min_share: float = 0.25
    max_lag: int = 2_000_000
    full_share_seconds: float = 6.0
    keep_up_margin: float = 1.25
    min_batch: int = 20

    @classmethod
    def from_env(cls, *, max_lag: int) -> IngestFirst:
        """The defaults, each overridable by OMNIJOURNEY_PROCESSING_<FIELD> (e.g. ..._FULL_SHARE_SECONDS)."""
        values: dict[str, Any] = {"max_lag": max_lag}
        for name in ("step_seconds", "catch_up_seconds", "min_share", "full_share_seconds", "keep_up_margin"):
            raw = os.environ.get(f"{ENV_PREFIX}PROCESSING_{name.upper()}", "").strip()
            if raw:
                try:
                    values[name] = float(raw)
                except ValueError as exc:  # fail at start-up, not in the middle of a step
                    raise ValueError(f"{ENV_PREFIX}PROCESSING_{name.upper()} must be a number, got {raw!r}") from exc
        return cls(**values)

    def share(self, lag: int, seconds_per_event: float, arrival_per_second: float = 0.0) -> float:
        """The share of time the stage may hold the write lock while events keep arriving
        (`arrival_per_second` of them, as measured between steps)."""
        backlog = lag * seconds_per_event
        if backlog <= self.catch_up_seconds or self.max_lag <= 0:
            return 1.0
        pressure = max(lag / self.max_lag, backlog / self.full_share_seconds if self.full_share_seconds > 0 else 1.0)
        paced = self.min_share + (1.0 - self.min_share) * min(1.0, pressure)
        keep_up = self.keep_up_margin * arrival_per_second * seconds_per_event
        return min(1.0, max(paced, keep_up))


class PipelineWorker:
    """A background thread that drains the event log.

    In the API process the ingest writer calls `wake()` after each commit, which cuts
    latency; a worker in another process has no such signal and polls every
    `poll_interval` seconds while idle. Polling only reads (`service.lag` in a read
    transaction), so on SQLite it does not take the write lock the ingest writer needs;
    a full step (which also applies pending identity actions) still runs at least every
    `IDLE_STEP_INTERVAL` seconds, as it always did.
    """

    IDLE_STEP_INTERVAL = 0.5

    def __init__(
        self,
        engine: sa.Engine,
        handlers: Sequence[Handler],
        *,
        batch: int = 2000,
        poll_interval: float = 0.5,
        ingest_first: IngestFirst | None = None,
        companions: Sequence[Any] = (),
    ) -> None:
        self._engine = engine
        #: threads started and stopped with this worker (the journeys' due-step runner)
        self._companions = list(companions)
        self._handlers = list(handlers)
        self._batch = batch
        self._poll_interval = poll_interval
        self._ingest_first = ingest_first
        self._limit = batch if ingest_first is None else max(ingest_first.min_batch, min(batch, 100))
        self._last_seen = -1
        self._last_seen_at = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omnijourney-pipeline", daemon=True)
        self.processed = 0

    def start(self) -> None:
        self._thread.start()
        for c in self._companions:
            c.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for c in self._companions:
            c.stop()
        self._thread.join(timeout=30)

    def _has_work(self) -> bool:
        try:
            with db.read(self._engine) as conn:
                return service.lag(conn=conn) > 0
        except Exception:  # let the step itself run (and log) if even reading fails
            return True

    def _run(self) -> None:
        busy = True
        last_step = 0.0
        while not self._stop.is_set():
            if not busy and time.monotonic() - last_step < self.IDLE_STEP_INTERVAL and not self._has_work():
                self._wake.wait(timeout=self._poll_interval)
                self._wake.clear()
                continue
            last_step = time.monotonic()
            limit = self._limit
            try:
                with db.write(self._engine) as conn:
                    n = service.process_step(conn=conn, handlers=self._handlers, limit=limit)
            except Exception:  # the step rolled back; try again shortly, never skip
                log.exception("processing step failed; retrying")
                time.sleep(1.0)
                continue
            self.processed += n
            busy = n >= limit
            if self._ingest_first is not None and n > 0:
                self._yield_to_ingest(n, time.monotonic() - last_step)
            if not busy:
                self._wake.wait(timeout=self._poll_interval)
                self._wake.clear()

    def _yield_to_ingest(self, n: int, seconds: float) -> None:
        policy = self._ingest_first
        assert policy is not None
        per_event = seconds / n
        self._limit = max(
            policy.min_batch, min(self._batch, int(policy.step_seconds / per_event) if per_event > 0 else self._batch)
        )
        try:
            with db.read(self._engine) as conn:
                last = ingest_service.last_event_id(conn=conn)
                lag = service.lag(conn=conn)
        except Exception:  # the next step will fail and log too
            return
        now = time.monotonic()
        arriving = self._last_seen >= 0 and last > self._last_seen
        rate = (last - self._last_seen) / (now - self._last_seen_at) if arriving and now > self._last_seen_at else 0.0
        self._last_seen, self._last_seen_at = last, now
        if arriving:
            share = policy.share(lag, per_event, rate)
            if share < 1.0:
                self._stop.wait(seconds * (1.0 - share) / share)


def _exit_with_parent(parent_pid: int, done: threading.Event) -> None:
    """Set `done` once `parent_pid` is no longer our parent (it died without stopping us)."""
    while not done.wait(1.0):
        if os.getppid() != parent_pid:
            log.warning("API server (pid %d) is gone; stopping the processing stage", parent_pid)
            done.set()


def run_worker(
    engine: sa.Engine,
    handlers: Sequence[Handler],
    *,
    poll_interval: float,
    max_lag: int,
    parent_pid: int | None = None,
) -> None:
    """Run a `PipelineWorker` in this process until SIGTERM, Ctrl-C, or the parent's exit.

    Ingestion comes first: on a single-writer database (SQLite) the worker paces its steps
    (`IngestFirst`); elsewhere it lowers its CPU priority, which is safe because it shares
    no lock with ingestion there (on SQLite a descheduled step would hold the write lock).
    """
    ingest_first = None
    if dialect.single_writer(engine):
        ingest_first = IngestFirst.from_env(max_lag=max_lag)
    else:
        with contextlib.suppress(OSError, AttributeError):
            os.nice(10)
    from omnijourney.engage.schedule import JourneyRunner

    w = PipelineWorker(
        engine, handlers, poll_interval=poll_interval, ingest_first=ingest_first, companions=[JourneyRunner(engine)]
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_pid, done), daemon=True).start()
    with fewer_collections():  # this process only runs the processing stage (and the journey runner)
        w.start()
        with contextlib.suppress(KeyboardInterrupt):
            done.wait()
        w.stop()


class PipelineProcess:
    """`omnijourney worker` as a child process of the API server, restarted if it dies, stopped with it.

    The processing stage is CPU-heavy Python; in its own process it no longer competes with
    request handling for the API process's GIL. It runs with the same settings (database,
    data dir and every OMNIJOURNEY_* variable) and exits by itself if the server dies.
    """

    def __init__(self, *, database_url: str, data_dir: Path, restart_delay: float = 1.0) -> None:
        self._cmd = [sys.executable, "-m", "omnijourney.cli", "worker", "--parent-pid", str(os.getpid())]
        # through the environment, not argv: a database URL may carry a password
        self._env = {**os.environ, ENV_PREFIX + "DATABASE_URL": database_url, ENV_PREFIX + "DATA_DIR": str(data_dir)}
        self._restart_delay = restart_delay
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor = threading.Thread(target=self._supervise, name="omnijourney-pipeline-process", daemon=True)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        self._spawn()
        self._supervisor.start()

    def _spawn(self) -> None:
        with self._lock:
            if not self._stopping.is_set():
                self._proc = subprocess.Popen(self._cmd, env=self._env, stdin=subprocess.DEVNULL)

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("processing stage exited with %s; restarting it in %.0f s", code, self._restart_delay)
            if self._stopping.wait(self._restart_delay):
                return
            self._spawn()

    def stop(self, timeout: float = 30.0) -> None:
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # the worker finishes its current step (or rolls it back) and exits
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._supervisor.join(timeout=5)

"""Runs the processing stage continuously: in a child process of the API server (what
`omnijourney serve` does), as a thread of the API process (tests, `serve --pipeline-thread`),
or alone (`omnijourney worker`, for scale-out)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import sqlalchemy as sa

from omnijourney.config import ENV_PREFIX
from omnijourney.pipeline import service
from omnijourney.pipeline.service import Handler
from omnijourney.store import db

log = logging.getLogger(__name__)


def run_until_idle(engine: sa.Engine, handlers: Sequence[Handler], *, batch: int = 2000) -> int:
    """Process everything stored so far; returns the number of events processed."""
    total = 0
    while True:
        with db.write(engine) as conn:
            n = service.process_step(conn=conn, handlers=handlers, limit=batch)
        if n == 0:
            return total
        total += n


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
        self, engine: sa.Engine, handlers: Sequence[Handler], *, batch: int = 2000, poll_interval: float = 0.5
    ) -> None:
        self._engine = engine
        self._handlers = list(handlers)
        self._batch = batch
        self._poll_interval = poll_interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omnijourney-pipeline", daemon=True)
        self.processed = 0

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
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
            try:
                with db.write(self._engine) as conn:
                    n = service.process_step(conn=conn, handlers=self._handlers, limit=self._batch)
            except Exception:  # the step rolled back; try again shortly, never skip
                log.exception("processing step failed; retrying")
                time.sleep(1.0)
                continue
            self.processed += n
            busy = n >= self._batch
            if not busy:
                self._wake.wait(timeout=self._poll_interval)
                self._wake.clear()


def _exit_with_parent(parent_pid: int, done: threading.Event) -> None:
    """Set `done` once `parent_pid` is no longer our parent (it died without stopping us)."""
    while not done.wait(1.0):
        if os.getppid() != parent_pid:
            log.warning("API server (pid %d) is gone; stopping the processing stage", parent_pid)
            done.set()


def run_worker(
    engine: sa.Engine, handlers: Sequence[Handler], *, poll_interval: float, parent_pid: int | None = None
) -> None:
    """Run a `PipelineWorker` in this process until SIGTERM, Ctrl-C, or the parent's exit."""
    w = PipelineWorker(engine, handlers, poll_interval=poll_interval)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_pid, done), daemon=True).start()
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

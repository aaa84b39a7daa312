"""Runs the processing stage continuously: in the API process (embedded default) or alone."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

import sqlalchemy as sa

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
    """A background thread that drains the event log; `wake()` after a commit cuts latency."""

    def __init__(self, engine: sa.Engine, handlers: Sequence[Handler], *, batch: int = 2000) -> None:
        self._engine = engine
        self._handlers = list(handlers)
        self._batch = batch
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

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with db.write(self._engine) as conn:
                    n = service.process_step(conn=conn, handlers=self._handlers, limit=self._batch)
            except Exception:  # the step rolled back; try again shortly, never skip
                log.exception("processing step failed; retrying")
                time.sleep(1.0)
                continue
            self.processed += n
            if n < self._batch:
                self._wake.wait(timeout=0.5)
                self._wake.clear()

"""Keeps the processing lag in memory so ingestion can shed load without a query per request."""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from omnijourney.pipeline import service
from omnijourney.store import db

log = logging.getLogger(__name__)


class LagMonitor:
    def __init__(self, engine: sa.Engine, *, interval: float = 1.0) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omnijourney-lag", daemon=True)
        self.lag = 0

    def refresh(self) -> int:
        with db.read(self._engine) as conn:
            self.lag = service.lag(conn=conn)
        return self.lag

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.refresh()
            except Exception:
                log.exception("could not measure processing lag")

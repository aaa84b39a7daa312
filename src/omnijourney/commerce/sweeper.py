"""Releases expired reservations in the background, so an expired hold or abandoned checkout gives
its units back even when no checkout comes along to trigger the sweep."""

from __future__ import annotations

import logging
import threading

import sqlalchemy as sa

from omnijourney.commerce import service
from omnijourney.store import db
from omnijourney.store.base import utcnow

log = logging.getLogger(__name__)


def expired_waiting(engine: sa.Engine) -> bool:
    """Whether any active reservation has expired (a read: the writer is not disturbed for nothing)."""
    r = service.RESERVATIONS
    with db.read(engine) as conn:
        stmt = sa.select(r.c.id).where(r.c.status == "active", r.c.expires_at <= utcnow()).limit(1)
        return conn.execute(stmt).first() is not None


def sweep_once(engine: sa.Engine, limit: int = 1000) -> int:
    if not expired_waiting(engine):
        return 0
    with db.write(engine) as conn:
        return service.sweep_expired_reservations(conn=conn, now=utcnow(), limit=limit)


class ReservationSweeper:
    """A daemon thread of the API process: `sweep_once` every `interval` seconds."""

    def __init__(self, engine: sa.Engine, *, interval: float = 15.0) -> None:
        self._engine = engine
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omnijourney-sweeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                released = sweep_once(self._engine)
                if released:
                    log.info("commerce: released %d expired reservations", released)
            except Exception:
                log.exception("could not sweep expired reservations")

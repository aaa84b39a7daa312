"""Group commit: one writer thread turns many concurrent requests into few transactions.

Each HTTP request hands its validated rows to the writer and waits for a future. The
writer drains everything queued, appends it in one transaction, commits, and only then
resolves the futures: a 2xx is therefore always sent after the data is durable, while
the cost of a commit (an fsync on SQLite) is shared by every request in the group. If
the database refuses the group's rows (a constraint, a value it does not take), each
request is written again on its own, so one bad request costs only its own 503, never
the others' events; if the database is unavailable, every request in the group gets its
503 at once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from omnijourney.ingest import service
from omnijourney.ingest.schemas import ValidMessage
from omnijourney.store import db, dialect

log = logging.getLogger(__name__)

#: most rows written in one transaction, so one huge group cannot stall the others
MAX_GROUP_ROWS = 10_000


class Overloaded(Exception):
    """The writer's queue is full; the client should retry later."""


@dataclass
class _Job:
    #: the events, encoded flat by `service.EventEncoder` on the submitting thread
    values: list[Any]
    events: int
    dead_letters: list[dict[str, Any]]
    future: Future[None] = field(default_factory=Future)


class EventWriter:
    def __init__(
        self,
        engine: sa.Engine,
        *,
        max_pending_events: int,
        on_commit: Callable[[], None] | None = None,
    ) -> None:
        self._engine = engine
        self._encoder = service.EventEncoder(engine)
        #: queues this writer's transactions with other processes' (serve --workers N)
        self._append_queue = dialect.append_queue(engine)
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._max_pending = max_pending_events
        self._pending = 0
        self._lock = threading.Lock()
        self._on_commit = on_commit
        self._thread = threading.Thread(target=self._run, name="omnijourney-event-writer", daemon=True)
        self._started = False

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def stop(self) -> None:
        if self._started:
            self._queue.put(None)
            self._thread.join(timeout=30)
            self._started = False
            if not self._thread.is_alive():
                self._append_queue.close()

    def submit(self, events: list[dict[str, Any]], dead_letters: list[dict[str, Any]]) -> Future[None]:
        """Queue `ValidMessage.row()` dicts (and dead letters); the future resolves after their commit."""
        return self._enqueue(len(events), lambda: self._encoder.encode(events), dead_letters)

    def submit_messages(
        self, source_id: int, messages: list[ValidMessage], dead_letters: list[dict[str, Any]]
    ) -> Future[None]:
        """`submit` for validated messages of one source (what the tracking API hands over)."""
        return self._enqueue(len(messages), lambda: self._encoder.encode_messages(source_id, messages), dead_letters)

    def _enqueue(
        self, events: int, encode: Callable[[], list[Any]], dead_letters: list[dict[str, Any]]
    ) -> Future[None]:
        # Rows are encoded here, on the caller's thread: the writer thread then spends its
        # time in the database rather than in Python, where it would wait for the GIL.
        n = events + len(dead_letters)
        with self._lock:
            if self._pending + n > self._max_pending and self._pending > 0:
                raise Overloaded(f"{self._pending} events are waiting to be written")
            self._pending += n
        try:
            job = _Job(encode(), events, dead_letters)
        except BaseException:
            with self._lock:
                self._pending -= n
            raise
        self._queue.put(job)
        return job.future

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            rows = first.events
            stop = False
            while rows < MAX_GROUP_ROWS:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
                rows += nxt.events
            self._write(group)
            if stop:
                return

    def _write(self, group: list[_Job]) -> None:
        try:
            self._commit(group)
        except Exception as exc:
            if len(group) == 1 or not dialect.refused_rows(exc):
                # a lone request, or the database is unavailable: every request in the group gets its 503
                log.exception("event write of %d requests failed; they are answered 503", len(group))
                for job in group:
                    job.future.set_exception(exc)
            else:
                # Nothing was committed, and one request's rows may be what the database
                # refused (a source deleted meanwhile, a value it does not take): write each
                # request on its own, so only that one gets a 503 and the others are stored.
                log.warning("group write of %d requests failed (%s); retrying them one by one", len(group), exc)
                committed = False
                for job in group:
                    try:
                        self._commit([job])
                    except Exception as job_exc:
                        log.exception("event write failed; the request is answered 503")
                        job.future.set_exception(job_exc)
                    else:
                        committed = True
                        job.future.set_result(None)
                if committed:
                    self._committed()
        else:
            for job in group:
                job.future.set_result(None)
            self._committed()
        finally:
            with self._lock:
                self._pending -= sum(job.events + len(job.dead_letters) for job in group)

    def _committed(self) -> None:
        if self._on_commit is not None:
            self._on_commit()

    def _commit(self, group: list[_Job]) -> None:
        """Append the group's events and dead letters in one transaction and commit it."""
        values: list[Any] = []
        for job in group:
            values.extend(job.values)
        dead = [row for job in group for row in job.dead_letters]
        with self._append_queue, db.write(self._engine) as conn:
            service.append_encoded_events(conn=conn, values=values)
            service.append_dead_letters(conn=conn, rows=dead)

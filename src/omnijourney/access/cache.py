"""In-memory cache of write keys, so the ingestion hot path does not query sources per request.

Entries expire after a short TTL, so a disabled source stops being accepted within seconds
on every API node; unknown keys are cached negatively for a shorter time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import sqlalchemy as sa

from omnijourney.access import service
from omnijourney.access.service import SourceInfo
from omnijourney.store import db

TTL_SECONDS = 10.0
NEGATIVE_TTL_SECONDS = 2.0


class SourceCache:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._by_key: dict[str, tuple[SourceInfo | None, float]] = {}
        self._origins: tuple[set[str], float] = (set(), 0.0)
        self._lock = threading.Lock()

    def get(self, write_key: str) -> SourceInfo | None:
        """Blocking lookup (call from a worker thread on a cache miss)."""
        hit = self.peek(write_key)
        if hit is not None:
            return hit[0]
        with db.read(self._engine) as conn:
            info = service.source_by_write_key(conn=conn, write_key=write_key)
        ttl = TTL_SECONDS if info is not None else NEGATIVE_TTL_SECONDS
        with self._lock:
            if len(self._by_key) > 100_000:  # bound memory against key-guessing floods
                self._by_key.clear()
            self._by_key[write_key] = (info, time.monotonic() + ttl)
        return info

    def peek(self, write_key: str) -> tuple[SourceInfo | None] | None:
        """Non-blocking: (info,) when cached and fresh, None when the database must be asked."""
        entry = self._by_key.get(write_key)
        if entry is not None and entry[1] > time.monotonic():
            return (entry[0],)
        return None

    def origin_allowed(self, origin: str) -> bool:
        origins, expires = self._origins
        if expires <= time.monotonic():
            with db.read(self._engine) as conn:
                origins = service.all_allowed_origins(conn=conn)
            self._origins = (origins, time.monotonic() + TTL_SECONDS)
        return "*" in origins or origin in origins

    def invalidate(self) -> None:
        with self._lock:
            self._by_key.clear()
            self._origins = (set(), 0.0)


TOKEN_TTL_SECONDS = 5.0


class TokenCache:
    """Bearer token → principal for a few seconds, so reads do not pay a query per request.

    Keyed by the token's SHA-256 (the raw token is never kept). Only known tokens are
    cached: a token created a moment ago is never shadowed by an earlier miss. A revoked
    token stops working within `TOKEN_TTL_SECONDS` on every API node (at once on the node
    that revoked it, which calls `invalidate`).
    """

    def __init__(
        self, engine: sa.Engine, ttl: float = TOKEN_TTL_SECONDS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._by_hash: dict[str, tuple[service.Principal, float]] = {}

    def peek(self, token: str) -> service.Principal | None:
        entry = self._by_hash.get(service.hash_token(token))
        if entry is not None and entry[1] > self._clock():
            return entry[0]
        return None

    def get(self, token: str) -> service.Principal | None:
        """Blocking lookup (call from a worker thread on a cache miss)."""
        hit = self.peek(token)
        if hit is not None:
            return hit
        with db.read(self._engine) as conn:
            principal = service.principal_for_token(conn=conn, token=token)
        if principal is not None:
            if len(self._by_hash) > 10_000:
                self._by_hash.clear()
            self._by_hash[service.hash_token(token)] = (principal, self._clock() + self._ttl)
        return principal

    def invalidate(self) -> None:
        self._by_hash.clear()

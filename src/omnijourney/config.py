"""Runtime configuration: environment variables first, CLI flags override.

Every setting has a safe default so `omnijourney serve` works on a fresh machine
with nothing but a writable working directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

ENV_PREFIX = "OMNIJOURNEY_"


def _env(name: str, default: str) -> str:
    return os.environ.get(ENV_PREFIX + name, default)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:  # fail fast at start-up, not on the first request
        raise ValueError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from exc


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(ENV_PREFIX + name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class IngestLimits:
    """Segment's documented limits are the defaults: 32 KB per message, 500 KB per batch."""

    max_message_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    max_batch_messages: int = 2500
    max_nesting_depth: int = 32
    #: processing lag (events stored but not yet processed) above which ingestion sheds load with 503
    max_processing_lag: int = 2_000_000
    #: events waiting in the group-commit queue above which ingestion answers 429
    max_pending_events: int = 50_000


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str
    host: str = "127.0.0.1"
    port: int = 8000
    limits: IngestLimits = field(default_factory=IngestLimits)
    #: run the processing stage inside the API process (the embedded default)
    run_pipeline: bool = True
    #: SQLite `synchronous` pragma; FULL makes every acknowledged commit survive power loss
    sqlite_synchronous: str = "FULL"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        data_dir = Path(overrides.get("data_dir") or _env("DATA_DIR", "./omnijourney-data")).expanduser()  # type: ignore[arg-type]
        database_url = _env("DATABASE_URL", "") or f"sqlite:///{(data_dir / 'omnijourney.db').resolve()}"
        limits = IngestLimits(
            max_message_bytes=_env_int("MAX_MESSAGE_BYTES", IngestLimits.max_message_bytes),
            max_batch_bytes=_env_int("MAX_BATCH_BYTES", IngestLimits.max_batch_bytes),
            max_processing_lag=_env_int("MAX_PROCESSING_LAG", IngestLimits.max_processing_lag),
            max_pending_events=_env_int("MAX_PENDING_EVENTS", IngestLimits.max_pending_events),
        )
        settings = cls(
            data_dir=data_dir,
            database_url=database_url,
            host=_env("HOST", "127.0.0.1"),
            port=_env_int("PORT", 8000),
            limits=limits,
            run_pipeline=_env_bool("RUN_PIPELINE", True),
            sqlite_synchronous=_env("SQLITE_SYNCHRONOUS", "FULL").upper(),
        )
        clean = {k: v for k, v in overrides.items() if v is not None}
        return replace(settings, **clean) if clean else settings

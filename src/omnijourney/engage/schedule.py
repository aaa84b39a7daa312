"""Journey execution: entries, the durable schedule, and the executor that runs due steps exactly once.

- **Entries** (`enter`): one row per pass of a profile through a journey, with the journey version it
  entered with (a changed definition never changes running entries), numbered per profile (`seq`)
  and deduplicated by what caused it (`dedupe_key`), so a replayed trigger never enters twice.
  Hold-out (control) entries are recorded and counted but schedule nothing.
- **The schedule** (`engage_journey_steps`): one row per (journey, step, profile, entry), UNIQUE, so a
  step can only ever be scheduled once per entry; the due time is in the database.
- **The executor** (`run_due`): claims due rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite has
  one writer) under a lease, runs each, and marks it finished only if its claim is still held.
  Database-only steps (wait, condition, branch, trait, task) finish in the transaction that applies
  them: exactly once. A message is sent **between** two transactions (no lock held during SMTP);
  the precise semantics (at-least-once over a crash window, with a stable Message-ID /
  Idempotency-Key) are in docs/ENGAGE.md.
- **At the moment of sending**, not only at entry: the entry is still active, consent for the
  purpose and channel, quiet hours (defer), per-channel frequency caps (skip; wait while only
  other sends in flight hold the last slot), the channel chosen
  from the customer's preference among those with consent and an address.
- **Frequency caps hold across workers**: after the (read) decision, the step takes a cap slot
  (`engage_journey_send_holds`) in a write transaction serialised per (customer, channel) that
  counts sent messages *and* other workers' holds; a refused hold decides again (another channel,
  skipped for the cap, or a short wait while the slot is only held). The outcome's transaction swaps the hold for the message.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
import socket
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import jinja2
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from omnijourney.commerce import events as outbox
from omnijourney.commerce import service as commerce
from omnijourney.config import IngestLimits
from omnijourney.engage import delivery, offers, recommend
from omnijourney.engage import service as segments
from omnijourney.engage.config import default_config
from omnijourney.engage.delivery import DeliveryConfig, Links, Mailer, Outcome, WebhookSender
from omnijourney.engage.journeys import END, JourneyDef, Step, default_journeys, holdout
from omnijourney.engage.models import (
    Journey,
    JourneyEntry,
    JourneyMessage,
    JourneySendHold,
    JourneyStep,
    JourneyTask,
    JourneyVersion,
)
from omnijourney.identity import service as identity
from omnijourney.identity.models import Profile
from omnijourney.ingest import service as ingest
from omnijourney.ingest.schemas import validate_message
from omnijourney.profiles import service as profiles
from omnijourney.profiles.config import ProfileConfig, load_profile_config
from omnijourney.profiles.models import ProfileStats, ProfileTrait
from omnijourney.store import db, dialect

log = logging.getLogger(__name__)

JOURNEYS = Journey.__table__
VERSIONS = JourneyVersion.__table__
ENTRIES = JourneyEntry.__table__
STEPS = JourneyStep.__table__
MESSAGES = JourneyMessage.__table__
TASKS = JourneyTask.__table__
HOLDS = JourneySendHold.__table__
PROFILES = Profile.__table__
TRAITS = ProfileTrait.__table__
STATS = ProfileStats.__table__

SOURCE_NAME = "omnijourney:journeys"
ORIGIN = "journeys"
SENT, FAILED, OPENED, CLICKED = (
    "Journey Message Sent",
    "Journey Message Failed",
    "Journey Message Opened",
    "Journey Message Clicked",
)
#: where each channel's address is read from (merged profile traits)
ADDRESS_TRAITS = {"email": "email", "sms": "phone", "push": "push_token", "chat": "chat_id"}
_LIMITS = IngestLimits()


# ============================================================================ definitions in the database


def sync_journeys(*, conn: Connection, journeys: Sequence[JourneyDef], now: datetime) -> dict[str, int]:
    """Store each definition; a changed content hash is a new version. Returns key -> current version.
    A journey that is disabled (or gone from the files) is marked inactive: its running entries go on
    with the version they entered with, and nobody new enters."""
    stored = {r.key: r for r in conn.execute(sa.select(JOURNEYS))}
    out = {}
    for j in journeys:
        digest = j.content_hash()
        have = stored.get(j.key)
        if have is None or have.content_hash != digest:
            version = 1 if have is None else have.version + 1
            conn.execute(
                dialect.insert_ignoring_conflicts(conn, VERSIONS, ["journey_key", "version"]),
                [
                    {
                        "journey_key": j.key,
                        "version": version,
                        "content_hash": digest,
                        "definition": j.model_dump(mode="json", by_alias=True),
                        "created_at": now,
                    }
                ],
            )
            values = {
                "name": j.name,
                "version": version,
                "content_hash": digest,
                "active": j.enabled,
                "updated_at": now,
            }
            if have is None:
                conn.execute(dialect.insert_ignoring_conflicts(conn, JOURNEYS, ["key"]), [{"key": j.key, **values}])
            else:
                conn.execute(sa.update(JOURNEYS).where(JOURNEYS.c.key == j.key).values(**values))
            out[j.key] = version
        else:
            if bool(have.active) != j.enabled:
                conn.execute(
                    sa.update(JOURNEYS).where(JOURNEYS.c.key == j.key).values(active=j.enabled, updated_at=now)
                )
            out[j.key] = have.version
    gone = set(stored) - {j.key for j in journeys}
    if gone:
        conn.execute(sa.update(JOURNEYS).where(JOURNEYS.c.key.in_(sorted(gone))).values(active=False, updated_at=now))
    return out


_definitions: dict[tuple[str, int, str], JourneyDef] = {}


def definition(conn: Connection, key: str, version: int) -> JourneyDef:
    """The definition an entry runs. Validated definitions are cached by (key, version, content
    hash): the hash is read each time, so another database (tests, a restored backup) with the same
    key and version but other content never gets a stale definition."""
    digest = conn.execute(
        sa.select(VERSIONS.c.content_hash).where(VERSIONS.c.journey_key == key, VERSIONS.c.version == version)
    ).scalar_one()
    found = _definitions.get((key, version, digest))
    if found is None:
        raw = conn.execute(
            sa.select(VERSIONS.c.definition).where(VERSIONS.c.journey_key == key, VERSIONS.c.version == version)
        ).scalar_one()
        found = JourneyDef.model_validate(raw)
        _definitions[(key, version, digest)] = found
    return found


def active_journeys(conn: Connection) -> list[tuple[JourneyDef, int]]:
    rows = conn.execute(sa.select(JOURNEYS.c.key, JOURNEYS.c.version).where(JOURNEYS.c.active).order_by(JOURNEYS.c.key))
    return [(definition(conn, r.key, r.version), r.version) for r in rows]


# ============================================================================ entering


def _facts_match(conn: Connection, root: int, rule: dict[str, Any], now: datetime, pcfg: ProfileConfig) -> bool:
    facts = segments.load_facts(conn=conn, roots=[root], segments=[{"rule": rule}], now=now, profile_config=pcfg)
    f = facts.get(root)
    return f is not None and segments.matches(rule, f)


def schedule(conn: Connection, *, entry: Any, step_key: str, due_at: datetime) -> None:
    """Put a step on the schedule; a second scheduling of the same (journey, step, profile, entry) is a no-op."""
    conn.execute(
        dialect.insert_ignoring_conflicts(conn, STEPS, ["journey_key", "step_key", "profile_id", "entry_seq"]),
        [
            {
                "entry_id": entry.id,
                "journey_key": entry.journey_key,
                "step_key": step_key,
                "profile_id": entry.profile_id,
                "entry_seq": entry.seq,
                "due_at": due_at,
                "status": "scheduled",
                "attempts": 0,
            }
        ],
    )


def enter(
    conn: Connection,
    *,
    journey: JourneyDef,
    version: int,
    profile_id: int,
    dedupe_key: str,
    context: dict[str, Any],
    now: datetime,
    profile_config: ProfileConfig | None = None,
) -> int | None:
    """Enter `profile_id` (a surviving profile) if the re-entry rules and the entry condition allow;
    returns the entry id, or None. Safe against a concurrent enterer: the UNIQUE constraints decide,
    inside a savepoint."""
    if conn.execute(
        sa.select(ENTRIES.c.id).where(ENTRIES.c.journey_key == journey.key, ENTRIES.c.dedupe_key == dedupe_key)
    ).first():
        return None
    last = conn.execute(
        sa.select(ENTRIES)
        .where(ENTRIES.c.journey_key == journey.key, ENTRIES.c.profile_id == profile_id)
        .order_by(ENTRIES.c.seq.desc())
        .limit(1)
    ).first()
    if last is not None:
        mode = journey.reentry.mode
        if mode == "never":
            return None
        if mode == "after_exit" and last.status == "active":
            return None
        if journey.reentry.cooldown_days and now - last.entered_at < timedelta(days=journey.reentry.cooldown_days):
            return None
    if journey.entry_condition is not None and not _facts_match(
        conn, profile_id, journey.entry_condition, now, profile_config or _pcfg()
    ):
        return None
    control = holdout(journey.key, profile_id, journey.holdout_percent)
    try:
        with conn.begin_nested():
            entry_id = conn.execute(
                sa.insert(ENTRIES)
                .values(
                    journey_key=journey.key,
                    journey_version=version,
                    profile_id=profile_id,
                    seq=(last.seq + 1) if last is not None else 1,
                    dedupe_key=dedupe_key[:200],
                    status="control" if control else "active",
                    context=context,
                    entered_at=now,
                )
                .returning(ENTRIES.c.id)
            ).scalar_one()
    except sa.exc.IntegrityError:  # another worker entered this profile at the same moment
        return None
    if not control:
        entry = conn.execute(sa.select(ENTRIES).where(ENTRIES.c.id == entry_id)).one()
        schedule(conn, entry=entry, step_key=journey.steps[0].key, due_at=now)
    return int(entry_id)


def end_entry(conn: Connection, *, entry_id: int, status: str, reason: str, now: datetime) -> None:
    """Finish an entry and cancel what it still had scheduled (a claimed step sees the entry ended)."""
    conn.execute(
        sa.update(ENTRIES)
        .where(ENTRIES.c.id == entry_id, ENTRIES.c.status == "active")
        .values(status=status, end_reason=reason[:64], ended_at=now)
    )
    conn.execute(
        sa.update(STEPS)
        .where(STEPS.c.entry_id == entry_id, STEPS.c.status == "scheduled")
        .values(status="cancelled", outcome=reason[:64], finished_at=now)
    )


# ============================================================================ triggers that are not events


def scan_triggers(conn: Connection, *, now: datetime, journeys: Sequence[tuple[JourneyDef, int]] | None = None) -> int:
    """Enter profiles for the time-based triggers: carts idle for N minutes, date traits, lapsing
    customers. Returns the number of entries. Each cause is entered once (dedupe key)."""
    entered = 0
    for j, version in journeys if journeys is not None else active_journeys(conn):
        t = j.trigger
        if t.inactivity is not None:
            after = None
            while True:
                carts = commerce.abandoned_carts(
                    conn=conn,
                    idle_minutes=t.inactivity.cart_idle_minutes,
                    max_idle_minutes=t.inactivity.max_idle_minutes,
                    min_value_minor=round(t.inactivity.min_value * 100),
                    now=now,
                    after_id=after,
                )
                for c in carts:
                    if c["profile_id"] is None:
                        continue
                    # bought since the cart last changed (a shop order does not always close our cart)
                    last_order = _last_order(conn, c["profile_id"])
                    if last_order is not None and last_order >= c["last_change_at"]:
                        continue
                    key = f"cart:{c['cart_id']}:{c['last_change_at'].isoformat()}"
                    context = {
                        "cart_id": c["cart_id"],
                        "value": str(c["value"]),
                        "currency": c["currency"],
                        "item_count": c["item_count"],
                    }
                    if enter(conn, journey=j, version=version, profile_id=c["profile_id"], dedupe_key=key,
                             context=context, now=now):  # fmt: skip
                        entered += 1
                if len(carts) < 500:
                    break
                after = carts[-1]["cart_id"]
        elif t.date is not None:
            for root, key, context in _date_candidates(conn, j, now):
                if enter(conn, journey=j, version=version, profile_id=root, dedupe_key=key, context=context, now=now):
                    entered += 1
    return entered


def _roots(conn: Connection, member_ids: Iterable[int]) -> dict[int, int]:
    ids = sorted(set(member_ids))
    out: dict[int, int] = {}
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        out.update(
            (r[0], r[1])
            for r in conn.execute(sa.select(PROFILES.c.id, PROFILES.c.canonical_id).where(PROFILES.c.id.in_(chunk)))
        )
    return out


def _last_order(conn: Connection, root: int) -> datetime | None:
    members = identity.members(conn=conn, root=root) or [root]
    return conn.execute(sa.select(sa.func.max(STATS.c.last_order_at)).where(STATS.c.profile_id.in_(members))).scalar()


def _date_candidates(conn: Connection, j: JourneyDef, now: datetime) -> list[tuple[int, str, dict[str, Any]]]:
    d = j.trigger.date
    assert d is not None
    out = []
    if d.days_since_last_order is not None:
        # the cluster's last order (any member) fell between N + window and N days ago
        hi = now - timedelta(days=d.days_since_last_order)
        lo = hi - timedelta(days=d.window_days)
        rows = conn.execute(
            sa.select(STATS.c.profile_id, STATS.c.last_order_at).where(
                STATS.c.last_order_at > lo, STATS.c.last_order_at <= hi
            )
        ).all()
        roots = _roots(conn, [r.profile_id for r in rows])
        latest = {root: _last_order(conn, root) for root in set(roots.values())}
        for root, last in sorted(latest.items()):
            if last is not None and lo < last <= hi:
                out.append((root, f"lapse:{root}:{last.isoformat()}", {"last_order_at": last.isoformat()}))
        return out
    # an annual date trait (birthday: "1990-05-17" or "05-17"): entered on the day, within the window
    rows = conn.execute(sa.select(TRAITS.c.profile_id, TRAITS.c.value).where(TRAITS.c.key == d.trait)).all()
    roots = _roots(conn, [r.profile_id for r in rows])
    for r in rows:
        text = str(r.value or "")[-5:]
        try:
            month, day = int(text[:2]), int(text[3:])
            this_year = now.replace(month=month, day=day, hour=0, minute=0, second=0, microsecond=0)
        except ValueError:
            continue
        if timedelta(0) <= now - this_year < timedelta(days=d.window_days):
            root = roots.get(r.profile_id, r.profile_id)
            out.append((root, f"date:{d.trait}:{root}:{now.year}", {d.trait or "date": r.value}))
    return out


# ============================================================================ the executor


@dataclass
class RunStats:
    claimed: int = 0
    done: int = 0
    sent: int = 0
    failed: int = 0
    skipped: int = 0
    deferred: int = 0
    retried: int = 0
    cancelled: int = 0
    entered: int = 0
    lost_claims: int = 0

    def add(self, other: RunStats) -> None:
        for k, v in other.__dict__.items():
            setattr(self, k, getattr(self, k) + v)


@dataclass
class Executor:
    """Runs due steps. One per worker thread (it keeps an SMTP connection and an HTTP client)."""

    engine: sa.Engine
    config: DeliveryConfig
    profile_config: ProfileConfig = field(default_factory=lambda: _pcfg())
    worker_id: str = field(default_factory=lambda: f"{socket.gethostname()}:{secrets.token_hex(4)}")
    #: test hook: called with the step id after a message is accepted and before its outcome commits
    after_delivery: Callable[[int], None] | None = None
    #: test hook: called with the step id once the send was decided (read), before the message goes out
    before_send: Callable[[int], None] | None = None
    #: definitions to store before the first run (the worker and the CLI pass the configured ones;
    #: otherwise the processing stage's handler stores them)
    journeys: Sequence[JourneyDef] | None = None

    def __post_init__(self) -> None:
        self.mailer = Mailer(self.config)
        self.webhooks = WebhookSender(self.config)

    def close(self) -> None:
        self.mailer.close()
        self.webhooks.close()

    # -- claiming --------------------------------------------------------------------------------

    def claim(self, *, now: datetime, limit: int) -> list[tuple[int, str]]:
        """Claim up to `limit` due steps (and steps whose claim lease expired: their worker died)."""
        token = secrets.token_hex(8)
        with db.write(self.engine) as conn:
            due = sa.or_(
                sa.and_(STEPS.c.status == "scheduled", STEPS.c.due_at <= now),
                sa.and_(STEPS.c.status == "claimed", STEPS.c.lease_until < now),
            )
            stmt = sa.select(STEPS.c.id).where(due).order_by(STEPS.c.due_at, STEPS.c.id).limit(limit)
            ids = [r[0] for r in conn.execute(dialect.for_update_skip_locked(stmt, conn))]
            if ids:
                conn.execute(
                    sa.update(STEPS)
                    .where(STEPS.c.id.in_(ids))
                    .values(
                        status="claimed",
                        claim_token=token,
                        lease_until=now + timedelta(seconds=self.config.lease_seconds),
                    )
                )
        return [(i, token) for i in ids]

    def _finish(
        self,
        conn: Connection,
        step_id: int,
        token: str,
        *,
        status: str,
        outcome: str,
        now: datetime,
        detail: dict[str, Any] | None = None,
        attempts: int | None = None,
    ) -> bool:
        """Mark a claimed step finished, only if this claim still holds it (else another worker does)."""
        values: dict[str, Any] = {
            "status": status,
            "outcome": outcome[:64],
            "detail": detail,
            "finished_at": now,
            "lease_until": None,
        }
        if attempts is not None:
            values["attempts"] = attempts
        n = conn.execute(
            sa.update(STEPS)
            .where(STEPS.c.id == step_id, STEPS.c.claim_token == token, STEPS.c.status == "claimed")
            .values(**values)
        ).rowcount
        return n == 1

    def _release(
        self, conn: Connection, step_id: int, token: str, *, due_at: datetime, outcome: str, attempts: int | None = None
    ) -> bool:
        values: dict[str, Any] = {"status": "scheduled", "due_at": due_at, "claim_token": None, "lease_until": None}
        values["outcome"] = outcome[:64]
        if attempts is not None:
            values["attempts"] = attempts
        n = conn.execute(
            sa.update(STEPS)
            .where(STEPS.c.id == step_id, STEPS.c.claim_token == token, STEPS.c.status == "claimed")
            .values(**values)
        ).rowcount
        return n == 1

    def _next(self, conn: Connection, entry: Any, j: JourneyDef, step: Step, target: str | None, due: datetime) -> None:
        if target is None or target == END:
            end_entry(conn, entry_id=entry.id, status="completed", reason="completed", now=due)
        else:
            schedule(conn, entry=entry, step_key=target, due_at=due)

    # -- running -----------------------------------------------------------------------------------

    def run_due(self, *, now: datetime, limit: int = 500, scan: bool = True) -> RunStats:
        """Enter time-triggered profiles, then claim and run up to `limit` due steps, a wave at a time."""
        stats = RunStats()
        if self.journeys is not None:
            with db.write(self.engine) as conn:
                sync_journeys(conn=conn, journeys=self.journeys, now=now)
            self.journeys = None
        if scan:
            with db.write(self.engine) as conn:
                stats.entered = scan_triggers(conn, now=now)
        claimed = self.claim(now=now, limit=limit)
        stats.claimed = len(claimed)
        size = max(1, self.config.wave_size)
        for i in range(0, len(claimed), size):
            stats.add(self.run_wave(claimed[i : i + size], now=now))
        return stats

    def run_step(self, step_id: int, token: str, *, now: datetime) -> RunStats:
        """Run one claimed step (a wave of one)."""
        return self.run_wave([(step_id, token)], now=now)

    def run_wave(self, claimed: Sequence[tuple[int, str]], *, now: datetime) -> RunStats:
        """Run claimed steps together. Decisions are read in one read transaction (no write lock, no
        fsync); the database-only outcomes (cancel, skip, defer, local steps) commit in one write
        transaction; the sends first hold their frequency-cap slots in one write transaction
        (`_hold`), go out one by one outside any transaction, and their outcomes commit together.
        Every write is guarded by the claim token, so a stale decision never applies twice. A send
        refused because another worker took the last slot since the decision was read is decided
        again with that slot counted."""
        s = RunStats()
        pending = list(claimed)
        refused: list[_Decision] = []
        for attempt in range(_DECIDE_ATTEMPTS):
            if not pending:
                break
            decisions = self._decide(pending, now, s)
            sends = [d for d in decisions if d.sends]
            settled = [d for d in decisions if not d.sends]
            if settled:
                with db.write(self.engine) as conn:
                    for d in settled:
                        self._settle(conn, d, now, s)
            if self.before_send is not None and attempt == 0:
                for d in sends:
                    self.before_send(d.step_id)
            held, refused = self._hold(sends, now, s)
            self._send(held, now, s)
            pending = [(d.step_id, d.token) for d in refused]
        if refused:  # refused every time: never exceed the cap, give up
            with db.write(self.engine) as conn:
                for d in refused:
                    assert d.plan is not None
                    self._skip(conn, d, "suppressed: frequency cap", {"channel": d.plan.channel}, now, s)
        return s

    def _decide(self, claimed: Sequence[tuple[int, str]], now: datetime, s: RunStats) -> list[_Decision]:
        out: list[_Decision] = []
        with db.read(self.engine) as conn:
            for step_id, token in claimed:
                row = conn.execute(_STEP_BY_ID, {"id": step_id}).one()
                if row.claim_token != token or row.status != "claimed":
                    s.lost_claims += 1
                    continue
                entry = conn.execute(_ENTRY_BY_ID, {"id": row.entry_id}).one()
                j = definition(conn, entry.journey_key, entry.journey_version)
                step = j.step(row.step_key)
                plan = None
                if entry.status == "active" and (step.send is not None or step.webhook is not None):
                    plan = self._plan(conn, row, entry, j, step, now)
                out.append(_Decision(step_id, token, row, entry, j, step, plan))
        return out

    def _settle(self, conn: Connection, d: _Decision, now: datetime, s: RunStats) -> None:
        """Apply a decision that sends nothing, in the caller's write transaction."""
        if d.entry.status != "active":
            self._finish(conn, d.step_id, d.token, status="cancelled", outcome=f"entry {d.entry.status}", now=now)
            s.cancelled += 1
        elif d.plan is None:
            self._run_local(conn, d.row, d.token, d.entry, d.j, d.step, now)
            s.done += 1
        elif d.plan.skip is not None:
            self._skip(conn, d, d.plan.skip, d.plan.detail, now, s)
        elif d.plan.defer_until is not None:
            self._release(conn, d.step_id, d.token, due_at=d.plan.defer_until, outcome=d.plan.defer_reason)
            s.deferred += 1

    def _skip(
        self,
        conn: Connection,
        d: _Decision,
        outcome: str,
        detail: dict[str, Any] | None,
        now: datetime,
        s: RunStats,
    ) -> None:
        if self._finish(conn, d.step_id, d.token, status="skipped", outcome=outcome, now=now, detail=detail):
            self._next(conn, d.entry, d.j, d.step, d.j.after(d.step), now)
        s.skipped += 1

    def _hold(self, sends: Sequence[_Decision], now: datetime, s: RunStats) -> tuple[list[_Decision], list[_Decision]]:
        """Take each send's frequency-cap slot for (customer, channel); returns the held sends (and
        those whose channel has no cap) and the refused ones (the cap is reached). A send whose
        claim was lost meanwhile is neither.

        One write transaction. Each (customer, channel) is locked before it is counted (PostgreSQL
        advisory locks, taken in sorted order so two workers' waves cannot deadlock; SQLite's
        BEGIN IMMEDIATE serialises the whole transaction), so two workers' count-and-hold never
        interleave. Sends of one wave to the same customer count each other's holds."""
        held: list[_Decision] = []
        refused: list[_Decision] = []
        capped: list[tuple[_Decision, tuple[int, float]]] = []
        for d in sends:
            assert d.plan is not None
            cap = self.config.frequency_caps.get(d.plan.channel or "") if d.plan.channel != "webhook" else None
            if cap is None:
                held.append(d)
            else:
                capped.append((d, cap))
        if not capped:
            return held, refused
        with db.write(self.engine) as conn:
            keyed = []
            for d, cap in capped:
                assert d.plan is not None
                root = identity.canonical_id(conn=conn, profile_id=d.plan.root) or d.plan.root
                keyed.append((root, d.plan.channel or "", d.step_id, d, cap))
            keyed.sort(key=lambda k: (k[0], k[1], k[2]))
            locked: set[tuple[int, str]] = set()
            for root, channel, step_id, d, cap in keyed:
                if (root, channel) not in locked:
                    dialect.lock_key(conn, "engage-cap", f"{root}:{channel}")
                    locked.add((root, channel))
                if conn.execute(_CLAIMED, {"id": step_id, "token": d.token}).first() is None:
                    s.lost_claims += 1
                    continue
                members = identity.members(conn=conn, root=root) or [root]
                since = now - timedelta(days=cap[1])
                if sum(_cap_counts(conn, members, channel, since, step_id=step_id)) >= cap[0]:
                    refused.append(d)
                    continue
                conn.execute(
                    dialect.insert_ignoring_conflicts(conn, HOLDS, ["step_id"]),
                    [{"step_id": step_id, "profile_id": root, "channel": channel, "held_at": now}],
                )
                held.append(d)
        return held, refused

    def _send(self, held: Sequence[_Decision], now: datetime, s: RunStats) -> None:
        """Deliver held sends outside any transaction, then commit their outcomes together."""
        outcomes: list[tuple[_Decision, Outcome]] = []
        try:
            for d in held:
                assert d.plan is not None
                outcome = self._deliver(d.plan)
                if outcome.ok and self.after_delivery is not None:
                    self.after_delivery(d.step_id)
                outcomes.append((d, outcome))
        finally:
            # what was sent is recorded even if a later send of the wave raised (the process survives)
            if outcomes:
                with db.write(self.engine) as conn:
                    for d, outcome in outcomes:
                        assert d.plan is not None
                        self._record(conn, d.row, d.token, d.entry, d.j, d.step, d.plan, outcome, now, s)

    def _run_local(
        self, conn: Connection, row: Any, token: str, entry: Any, j: JourneyDef, step: Step, now: datetime
    ) -> None:
        """Database-only steps: the effect and the finish in one transaction (exactly once)."""
        target = j.after(step)
        due = now
        outcome = step.kind
        if step.wait is not None:
            due = now + step.wait.delta
        elif step.condition is not None:
            if not _facts_match(conn, entry.profile_id, step.condition, now, self.profile_config):
                self._finish(conn, row.id, token, status="done", outcome="condition false", now=now)
                end_entry(conn, entry_id=entry.id, status="exited", reason=f"condition {step.key}", now=now)
                return
            outcome = "condition true"
        elif step.branch is not None:
            yes = _facts_match(conn, entry.profile_id, step.branch.if_, now, self.profile_config)
            target = step.branch.then if yes else step.branch.else_
            outcome = f"branch {'then' if yes else 'else'}"
        elif step.update_trait is not None:
            _append_identify(conn, row, {step.update_trait.key: step.update_trait.value}, now)
        elif step.task is not None:
            location = step.task.location
            if location == "pickup":
                pickup = (entry.context or {}).get("pickup_location")
                location = pickup if isinstance(pickup, str) and pickup else "preferred"
            if location == "preferred":
                location = _preferred_store(conn, entry.profile_id)
            conn.execute(
                dialect.insert_ignoring_conflicts(conn, TASKS, ["step_id"]),
                [
                    {
                        "step_id": row.id,
                        "journey_key": entry.journey_key,
                        "profile_id": entry.profile_id,
                        "location": location,
                        "title": step.task.title,
                        "status": "open",
                        "created_at": now,
                    }
                ],
            )
        if self._finish(conn, row.id, token, status="done", outcome=outcome, now=now):
            self._next(conn, entry, j, step, target, due)

    # -- sending -----------------------------------------------------------------------------------

    def _plan(self, conn: Connection, row: Any, entry: Any, j: JourneyDef, step: Step, now: datetime) -> Plan:
        root = identity.canonical_id(conn=conn, profile_id=entry.profile_id) or entry.profile_id
        members = identity.members(conn=conn, root=root) or [root]
        plan = Plan(step_id=row.id, root=root, key=f"{j.key}.{step.key}.{entry.profile_id}.{entry.seq}")
        if step.webhook is not None:
            plan.channel, plan.purpose = "webhook", "operational"
            plan.url = step.webhook.url
            plan.secret = delivery._env(step.webhook.secret_env.removeprefix("OMNIJOURNEY_")).encode() or (
                self.config.webhook_secret
            )
            plan.payload = {
                "event": step.webhook.event,
                "journey": j.key,
                "step": step.key,
                "profile_id": root,
                "entry": {"seq": entry.seq, "context": entry.context},
            }
            return plan
        send = step.send
        assert send is not None
        traits = profiles.traits(conn=conn, member_ids=members, config=self.profile_config)
        consents = {(c["purpose"], c["channel"]): c["status"] for c in profiles.consents(conn=conn, member_ids=members)}
        preferred = traits.get("preferred_channel") or _most_used_channel(conn, members)
        order = sorted(send.channels, key=lambda c: (c != preferred, send.channels.index(c)))
        reasons: dict[str, str] = {}
        for channel in order:
            if not consent_allows(consents, send.purpose, channel, self.config.opt_in_purposes):
                reasons[channel] = "no consent"
                continue
            address = traits.get(ADDRESS_TRAITS.get(channel, channel))
            if not address or not isinstance(address, str):
                reasons[channel] = "no address"
                continue
            if channel != "email" and channel not in self.config.providers:
                reasons[channel] = "no provider"
                continue
            cap = self.config.frequency_caps.get(channel)
            if cap is not None:
                sent, held = _cap_counts(conn, members, channel, now - timedelta(days=cap[1]), step_id=row.id)
                if sent >= cap[0]:
                    reasons[channel] = "frequency cap"
                    continue
                if sent + held >= cap[0]:
                    reasons[channel] = CAP_SLOT_HELD
                    continue
            plan.channel, plan.address = channel, address
            break
        if plan.channel is None:
            plan.detail = {"reasons": reasons}
            if CAP_SLOT_HELD in reasons.values():
                # the last slot is taken by a send in flight that may still fail: look again shortly
                # instead of skipping for a cap that may turn out not to be reached
                plan.defer_until = now + timedelta(seconds=self.config.cap_recheck_seconds)
                plan.defer_reason = "deferred: " + CAP_SLOT_HELD
                return plan
            plan.skip = "suppressed: " + ", ".join(sorted(set(reasons.values())))
            return plan
        quiet = self.config.quiet_hours
        if quiet is not None and plan.channel in quiet.channels:
            tz = traits.get("timezone") if isinstance(traits.get("timezone"), str) else quiet.timezone
            until = quiet_until(now, quiet, tz)
            if until is not None:
                plan.defer_until = until
                plan.defer_reason = "deferred: quiet hours"
                return plan
        plan.purpose = send.purpose
        links = Links(self.config, row.id, root, send.purpose, plan.channel)
        context: dict[str, Any] = {
            "profile": {"id": root, "traits": traits},
            "first_name": traits.get("firstName") or traits.get("first_name"),
            "context": entry.context or {},
            "cart": None,
            "journey": {"key": j.key, "name": j.name},
            "subject": send.subject,
            "recommendations": [],
            "offer": None,
        }
        if j.trigger.inactivity is not None:
            context["cart"] = entry.context
        if send.with_recommendations:
            with contextlib.suppress(recommend.RecoError):
                context["recommendations"] = recommend.recommend(
                    conn=conn,
                    profile_id=root,
                    context="email",
                    store=None,
                    limit=4,
                    config=default_config().recommendations,
                )["items"]
        if send.with_offer:
            context["offer"] = offers.eligible_offers(conn=conn, profile_id=root, channel=plan.channel, now=now)["best"]
        try:
            plan.text, plan.html = delivery.render(send.template, plan.channel, context, links)
        except (jinja2.TemplateError, LookupError) as exc:  # a broken template fails this step, not the worker
            plan.skip = f"template error: {exc}"[:64]
            return plan
        plan.subject = send.subject
        plan.unsubscribe_url = links.unsubscribe_url
        return plan

    def _deliver(self, plan: Plan) -> Outcome:
        if plan.channel == "email":
            msg = self.mailer.message(
                to=plan.address or "",
                subject=plan.subject,
                text=plan.text,
                html=plan.html,
                message_key=plan.key,
                unsubscribe_url=plan.unsubscribe_url,
            )
            return self.mailer.send(msg)
        if plan.channel == "webhook":
            return self.webhooks.post(url=plan.url, secret=plan.secret, payload=plan.payload, idempotency_key=plan.key)
        return self.webhooks.post(
            url=self.config.providers[plan.channel],
            secret=self.config.webhook_secret,
            payload={"channel": plan.channel, "to": plan.address, "text": plan.text, "profile_id": plan.root},
            idempotency_key=plan.key,
        )

    def _record(
        self,
        conn: Connection,
        row: Any,
        token: str,
        entry: Any,
        j: JourneyDef,
        step: Step,
        plan: Plan,
        outcome: Outcome,
        now: datetime,
        s: RunStats,
    ) -> None:
        attempts = row.attempts + 1
        if not outcome.ok and outcome.transient and attempts < self.config.max_attempts:
            backoff = timedelta(seconds=self.config.backoff_seconds * 2 ** (attempts - 1))
            if self._release(conn, row.id, token, due_at=now + backoff, outcome=outcome.detail, attempts=attempts):
                _drop_hold(conn, row.id)  # decided again (and held again) before the retry
                _emit(conn, row, plan, FAILED, f"failed:{attempts}", now,
                      {"error": outcome.detail, "attempt": attempts, "will_retry": True})  # fmt: skip
                s.retried += 1
            else:
                s.lost_claims += 1
            return
        status = "done" if outcome.ok else "failed"
        if not self._finish(conn, row.id, token, status=status, outcome=outcome.detail or "sent", now=now,
                            detail={"channel": plan.channel, "attempts": attempts}, attempts=attempts):  # fmt: skip
            s.lost_claims += 1  # our lease expired and another worker took the step over
            return
        _drop_hold(conn, row.id)  # the message counts for the cap from now on
        conn.execute(
            sa.insert(MESSAGES).values(
                step_id=row.id,
                entry_id=entry.id,
                journey_key=entry.journey_key,
                profile_id=plan.root,
                channel=plan.channel or "",
                purpose=plan.purpose,
                address=(plan.address or plan.url or "")[:320],
                status="sent" if outcome.ok else "failed",
                sent_at=now,
                clicks=0,
            )
        )
        self._next(conn, entry, j, step, j.after(step), now)
        if outcome.ok:
            _emit(conn, row, plan, SENT, "sent", now, {})
            s.sent += 1
        else:
            _emit(conn, row, plan, FAILED, f"failed:{attempts}", now,
                  {"error": outcome.detail, "attempt": attempts, "will_retry": False})  # fmt: skip
            s.failed += 1
        s.done += 1


@dataclass(slots=True)
class _Decision:
    """A claimed step as read for its wave: what it is and, for a send, its plan."""

    step_id: int
    token: str
    row: Any
    entry: Any
    j: JourneyDef
    step: Step
    plan: Plan | None

    @property
    def sends(self) -> bool:
        """An active entry's send that passed every check: it goes on to hold a slot and go out."""
        p = self.plan
        return self.entry.status == "active" and p is not None and p.skip is None and p.defer_until is None


_STEP_BY_ID = sa.select(STEPS).where(STEPS.c.id == sa.bindparam("id"))
_ENTRY_BY_ID = sa.select(ENTRIES).where(ENTRIES.c.id == sa.bindparam("id"))
_CLAIMED = sa.select(STEPS.c.id).where(
    STEPS.c.id == sa.bindparam("id"), STEPS.c.claim_token == sa.bindparam("token"), STEPS.c.status == "claimed"
)


@dataclass
class Plan:
    step_id: int
    root: int
    key: str
    channel: str | None = None
    purpose: str = "marketing"
    address: str | None = None
    skip: str | None = None
    detail: dict[str, Any] | None = None
    defer_until: datetime | None = None
    defer_reason: str = ""
    subject: str = ""
    text: str = ""
    html: str | None = None
    unsubscribe_url: str = ""
    url: str = ""
    secret: bytes = b""
    payload: dict[str, Any] = field(default_factory=dict)


# ============================================================================ policy helpers


def consent_allows(consents: dict[tuple[str, str], str], purpose: str, channel: str, opt_in: Sequence[str]) -> bool:
    """A withdrawal or denial for the purpose on this channel (or on `all`) forbids; an opt-in purpose
    also needs a grant (on this channel or on `all`)."""
    states = [consents.get((purpose, channel)), consents.get((purpose, "all"))]
    if any(s in ("withdrawn", "denied") for s in states):
        return False
    return purpose not in opt_in or "granted" in states


def quiet_until(now: datetime, quiet: delivery.QuietHours, tz: str) -> datetime | None:
    """The end of the quiet period `now` falls in (as an aware UTC time), or None outside it."""
    local = delivery.local_time(now, tz)
    t = local.time().replace(tzinfo=None)
    start, end = quiet.start, quiet.end
    inside = (start <= t < end) if start < end else (t >= start or t < end)
    if not inside:
        return None
    until = local.replace(hour=end.hour, minute=end.minute, second=0, microsecond=0)
    if until <= local:
        until += timedelta(days=1)
    return until.astimezone(now.tzinfo)


#: decisions of one step before it gives up on a channel other workers keep taking (see run_wave)
_DECIDE_ATTEMPTS = 4
#: why a send waits: every channel's last cap slot is held by another step's send in flight
CAP_SLOT_HELD = "frequency cap slot held by a send in flight"


_SENT_COUNT = sa.select(sa.func.count()).where(
    MESSAGES.c.profile_id.in_(sa.bindparam("members", expanding=True)),
    MESSAGES.c.channel == sa.bindparam("channel"),
    MESSAGES.c.status == "sent",
    MESSAGES.c.sent_at >= sa.bindparam("since"),
)
_HELD_COUNT = (
    sa.select(sa.func.count())
    .select_from(HOLDS.join(STEPS, STEPS.c.id == HOLDS.c.step_id))
    .where(
        HOLDS.c.profile_id.in_(sa.bindparam("members", expanding=True)),
        HOLDS.c.channel == sa.bindparam("channel"),
        HOLDS.c.step_id != sa.bindparam("step_id"),
        STEPS.c.status == "claimed",
    )
)


def _cap_counts(
    conn: Connection, members: list[int], channel: str, since: datetime, *, step_id: int
) -> tuple[int, int]:
    """What counts against the cap: messages sent since `since`, and the slots other steps hold
    (being sent right now) while they are still claimed. (Statements built once: this runs twice
    per send.)"""
    params = {"members": members, "channel": channel, "since": since, "step_id": step_id}
    sent = conn.execute(_SENT_COUNT, params).scalar_one()
    held = conn.execute(_HELD_COUNT, params).scalar_one()
    return int(sent), int(held)


def _drop_hold(conn: Connection, step_id: int) -> None:
    conn.execute(sa.delete(HOLDS).where(HOLDS.c.step_id == step_id))


def _most_used_channel(conn: Connection, members: list[int]) -> str | None:
    from omnijourney.profiles.models import ProfileCounter

    c = ProfileCounter.__table__
    row = conn.execute(
        sa.select(c.c.key, sa.func.sum(c.c.count).label("n"))
        .where(c.c.profile_id.in_(members), c.c.kind == "channel")
        .group_by(c.c.key)
        .order_by(sa.desc("n"), c.c.key)
        .limit(1)
    ).first()
    return row.key if row else None


def _preferred_store(conn: Connection, profile_id: int) -> str | None:
    root = identity.canonical_id(conn=conn, profile_id=profile_id) or profile_id
    members = identity.members(conn=conn, root=root) or [root]
    traits = profiles.traits(conn=conn, member_ids=members, config=_pcfg())
    if isinstance(traits.get("preferred_store"), str):
        return traits["preferred_store"]
    return recommend._preferred_store(conn, members)


_pcfg_cache: list[ProfileConfig] = []


def _pcfg() -> ProfileConfig:
    if not _pcfg_cache:
        _pcfg_cache.append(load_profile_config())
    return _pcfg_cache[0]


# ============================================================================ timeline events


def journey_source_id(conn: Connection) -> int | None:
    return outbox.internal_source_id(conn, create=False, name=SOURCE_NAME)


def emit_event(
    conn: Connection,
    *,
    profile_id: int,
    event: str,
    message_id: str,
    channel: str,
    properties: dict[str, Any],
    now: datetime,
) -> None:
    row = outbox.prepare(
        conn,
        message_id=message_id,
        event=event,
        channel=channel,
        profile_id=profile_id,
        anonymous_id=None,
        properties=properties,
        now=now,
        source_name=SOURCE_NAME,
        origin=ORIGIN,
        fallback_anonymous_id=f"oj-profile-{profile_id}",
    )
    outbox.append(conn, [row])


def _emit(
    conn: Connection, row: Any, plan: Plan, event: str, suffix: str, now: datetime, extra: dict[str, Any]
) -> None:
    emit_event(
        conn,
        profile_id=plan.root,
        event=event,
        message_id=f"oj:journey:{row.id}:{suffix}",
        channel=plan.channel if plan.channel in ("email", "sms", "push", "chat") else "other",
        properties={
            "journey": row.journey_key,
            "step": row.step_key,
            "entry_seq": row.entry_seq,
            "step_id": row.id,
            "message_channel": plan.channel,
            "purpose": plan.purpose,
            **extra,
        },
        now=now,
    )


def _append_identify(conn: Connection, row: Any, traits: dict[str, Any], now: datetime) -> None:
    """A trait change as an `identify` of the internal journeys source: the profile handler applies it,
    it is on the timeline and survives a rebuild like any other trait."""
    owner = outbox.owner_fields(conn, profile_id=row.profile_id, anonymous_id=None)
    if owner is None:
        return
    if not (owner.get("userId") or owner.get("anonymousId")):
        owner["anonymousId"] = f"oj-profile-{row.profile_id}"
    context = owner.pop("context", {})
    context["channel"] = "other"
    context["omnijourney"] = {"origin": ORIGIN}
    raw = {
        "type": "identify",
        "messageId": f"oj:journey:{row.id}:trait",
        "timestamp": now.isoformat(),
        "traits": {**owner.pop("traits", {}), **traits},
        "context": context,
        **{k: v for k, v in owner.items() if k in ("userId", "anonymousId")},
    }
    valid = validate_message(
        raw,
        default_type=None,
        source_channel="other",
        received_at=now,
        batch_sent_at=None,
        client_ip=None,
        limits=_LIMITS,
    )
    if isinstance(valid, list):
        raise ValueError(f"journey trait update does not validate: {valid}")
    source_id = outbox.internal_source_id(conn, name=SOURCE_NAME)
    assert source_id is not None
    ingest.append_events(conn=conn, rows=[valid.row(source_id)])


# ============================================================================ tracking and unsubscribe


def _message_of(conn: Connection, step_id: int) -> Any:
    return conn.execute(sa.select(MESSAGES).where(MESSAGES.c.step_id == step_id)).first()


def record_open(conn: Connection, *, step_id: int, now: datetime) -> bool:
    """The first open of a message is recorded and put on the timeline; later opens change nothing."""
    m = _message_of(conn, step_id)
    if m is None:
        return False
    n = conn.execute(
        sa.update(MESSAGES).where(MESSAGES.c.id == m.id, MESSAGES.c.opened_at.is_(None)).values(opened_at=now)
    ).rowcount
    if n:
        emit_event(conn, profile_id=m.profile_id, event=OPENED, message_id=f"oj:journey:{step_id}:opened",
                   channel=m.channel, properties={"journey": m.journey_key, "step_id": step_id}, now=now)  # fmt: skip
    return True


def record_click(conn: Connection, *, step_id: int, url: str, now: datetime) -> bool:
    m = _message_of(conn, step_id)
    if m is None:
        return False
    conn.execute(sa.update(MESSAGES).where(MESSAGES.c.id == m.id).values(clicks=MESSAGES.c.clicks + 1))
    # one event per message and link (a mail scanner following a link twice is one click)
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    emit_event(conn, profile_id=m.profile_id, event=CLICKED, message_id=f"oj:journey:{step_id}:click:{digest}",
               channel=m.channel, properties={"journey": m.journey_key, "step_id": step_id, "url": url[:500]}, now=now)  # fmt: skip
    return True


def unsubscribe(conn: Connection, *, step_id: int, profile_id: int, purpose: str, channel: str, now: datetime) -> None:
    """Withdraw consent for (purpose, channel) as a `Consent Updated` event on the customer's timeline
    (the profile handler records it in the consent ledger, as any consent event; a repeated click
    appends nothing new: the message id is derived from the message)."""
    emit_event(
        conn,
        profile_id=profile_id,
        event="Consent Updated",
        message_id=f"oj:journey:{step_id}:unsubscribe:{purpose}:{channel}",
        channel=channel,
        properties={
            "purpose": purpose,
            "channel": channel,
            "status": "withdrawn",
            "evidence": {"via": "unsubscribe_link", "step_id": step_id},
        },
        now=now,
    )


# ============================================================================ statistics


def overview(conn: Connection, *, key: str | None = None) -> list[dict[str, Any]]:
    """Every stored journey (or one) with its current definition's steps and its statistics."""
    q = sa.select(JOURNEYS).order_by(JOURNEYS.c.key)
    if key is not None:
        q = q.where(JOURNEYS.c.key == key)
    all_stats = stats(conn, journey_key=key)
    out = []
    for r in conn.execute(q).all():
        j = definition(conn, r.key, r.version)
        out.append(
            {
                "key": r.key,
                "name": r.name,
                "description": j.description,
                "active": bool(r.active),
                "version": r.version,
                "content_hash": r.content_hash,
                "trigger_kind": j.trigger.kind,
                "trigger": j.trigger.model_dump(mode="json", exclude_none=True),
                "exit_on": j.exit_on,
                "reentry": j.reentry.model_dump(mode="json"),
                "holdout_percent": j.holdout_percent,
                "conversion": j.conversion.model_dump(mode="json") if j.conversion else None,
                "steps": [
                    {"key": s.key, "kind": s.kind, **s.model_dump(mode="json", by_alias=True, exclude_none=True)}
                    for s in j.steps
                ],
                "stats": all_stats.get(r.key, empty_stats()),
            }
        )
    return out


def empty_stats() -> dict[str, Any]:
    return {
        "entered": 0,
        "control": 0,
        "active": 0,
        "sent": 0,
        "failed": 0,
        "opened": 0,
        "clicked": 0,
        "converted": 0,
        "control_converted": 0,
        "conversion_rate": None,
        "control_conversion_rate": None,
        "uplift": None,
    }


def stats(conn: Connection, *, journey_key: str | None = None) -> dict[str, dict[str, Any]]:
    """Per journey: entered (treatment / control), sent, failed, converted, conversion rates and uplift."""
    out: dict[str, dict[str, Any]] = defaultdict(empty_stats)
    q = sa.select(
        ENTRIES.c.journey_key,
        ENTRIES.c.status,
        sa.func.count().label("n"),
        sa.func.count(ENTRIES.c.converted_at).label("conv"),
    ).group_by(ENTRIES.c.journey_key, ENTRIES.c.status)
    if journey_key:
        q = q.where(ENTRIES.c.journey_key == journey_key)
    for r in conn.execute(q):
        o = out[r.journey_key]
        if r.status == "control":
            o["control"] += r.n
            o["control_converted"] += r.conv
        else:
            o["entered"] += r.n
            o["converted"] += r.conv
            if r.status == "active":
                o["active"] += r.n
    m = sa.select(
        MESSAGES.c.journey_key,
        sa.func.sum(sa.case((MESSAGES.c.status == "sent", 1), else_=0)).label("sent"),
        sa.func.sum(sa.case((MESSAGES.c.status == "failed", 1), else_=0)).label("failed"),
        sa.func.count(MESSAGES.c.opened_at).label("opened"),
        sa.func.sum(sa.case((MESSAGES.c.clicks > 0, 1), else_=0)).label("clicked"),
    ).group_by(MESSAGES.c.journey_key)
    if journey_key:
        m = m.where(MESSAGES.c.journey_key == journey_key)
    for r in conn.execute(m):
        o = out[r.journey_key]
        o.update(
            sent=int(r.sent or 0), failed=int(r.failed or 0), opened=int(r.opened or 0), clicked=int(r.clicked or 0)
        )
    for o in out.values():
        rate = o["converted"] / o["entered"] if o["entered"] else None
        crate = o["control_converted"] / o["control"] if o["control"] else None
        o["conversion_rate"] = round(rate, 4) if rate is not None else None
        o["control_conversion_rate"] = round(crate, 4) if crate is not None else None
        o["uplift"] = round(rate - crate, 4) if rate is not None and crate is not None else None
    return dict(out)


# ============================================================================ the periodic tick


class JourneyRunner:
    """The due-step side of journeys, a thread beside the processing stage in the same process
    (`PipelineWorker(companions=[...])`): every `interval` seconds it enters time-triggered
    profiles (at most every `scan_interval`) and runs due steps until none is left."""

    def __init__(
        self,
        engine: sa.Engine,
        config: DeliveryConfig | None = None,
        *,
        interval: float = 5.0,
        scan_interval: float = 60.0,
        batch: int = 200,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        import threading

        from omnijourney.store.base import utcnow

        self._engine = engine
        self._config = config
        self._interval, self._scan_interval, self._batch = interval, scan_interval, batch
        self._clock = clock or utcnow
        self._enabled = any(j.enabled for j in default_journeys())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="omnijourney-journeys", daemon=True)
        self._last_scan = 0.0
        self.totals = RunStats()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _pending(self) -> bool:
        with db.read(self._engine) as conn:
            return (
                conn.execute(sa.select(STEPS.c.id).where(STEPS.c.status.in_(["scheduled", "claimed"])).limit(1)).first()
                is not None
            )

    def tick(self, executor: Executor) -> RunStats:
        import time

        total = RunStats()
        scan = self._enabled and time.monotonic() - self._last_scan >= self._scan_interval
        if scan:
            self._last_scan = time.monotonic()
        if not scan and not self._pending():
            return total
        first = True
        while not self._stop.is_set():
            s = executor.run_due(now=self._clock(), limit=self._batch, scan=scan and first)
            first = False
            total.add(s)
            if s.claimed < self._batch:
                break
        return total

    def _run(self) -> None:
        executor: Executor | None = None
        while not self._stop.is_set():
            try:
                if executor is None:
                    config = self._config or DeliveryConfig.from_env()
                    executor = Executor(self._engine, config, journeys=default_journeys())
                self.totals.add(self.tick(executor))
            except Exception:  # a failed tick rolled back; the next one tries again, nothing is skipped
                log.exception("journeys: tick failed; retrying")
            self._stop.wait(self._interval)
        if executor is not None:
            executor.close()

"""Retention cohorts and lifecycle, defined once with Ibis (DuckDB and Spark run the same expression).

Rules (docs/ANALYTICS.md, "Retention and lifecycle"):

- **Periods** are UTC calendar days, ISO weeks (Monday to Sunday) or calendar months. A period is an
  integer index: days since the epoch, Monday-based weeks since the epoch, `year * 12 + month - 1`.
- **Cohort**: first-time (a customer's first cohort event ever, with the non-period filters; the customer
  is in a cohort only when that first event falls in the period) or recurring (the customer is in the
  cohort of every period in which they did the cohort event in the period).
- **Return**: period k >= 1 of a cohort counts the cohort's customers with a return event in period
  `cohort + k` ("on"), or in `cohort + k` or any later period up to the period end ("on or after").
  Period 0 is the cohort size. A return in the cohort's own period never counts.
- **Not yet observable**: periods that start after the period end (or now) are null, not 0; the period
  containing the end is partial.
- **Lifecycle** (per period, activity = the chosen events): new = active for the first time ever;
  returning = active in this and the previous period; resurrecting = active, not in the previous period,
  active before; dormant = active in the previous period, not in this one. History before the period start
  decides the status of the first periods shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import ibis

from omnijourney.analytics import filters as flt
from omnijourney.analytics.engine import LakeTables, materialise
from omnijourney.analytics.funnels import Step, match

Granularity = Literal["day", "week", "month"]
CohortType = Literal["first_time", "recurring"]
Mode = Literal["on", "on_or_after"]
GRANULARITIES = ("day", "week", "month")
DAY_MS = 86_400_000
#: lifecycle shows at most this many periods (the latest ones)
MAX_LIFECYCLE_PERIODS = 400
LIFECYCLE_STATES = ("new", "returning", "resurrecting", "dormant")
PURCHASE = Step("Order Completed", ("Order Completed",))
ANY_EVENT = Step("any event")


@dataclass(frozen=True)
class RetentionSpec:
    cohort: Step = PURCHASE
    returning: Step = PURCHASE
    cohort_type: CohortType = "first_time"
    mode: Mode = "on"
    granularity: Granularity = "week"
    periods: int = 8

    def __post_init__(self) -> None:
        if self.cohort_type not in ("first_time", "recurring"):
            raise ValueError(f"unknown cohort type {self.cohort_type!r}; use first_time or recurring")
        if self.mode not in ("on", "on_or_after"):
            raise ValueError(f"unknown retention mode {self.mode!r}; use on or on_or_after")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; use day, week or month")
        if not 1 <= self.periods <= 120:
            raise ValueError("periods must be between 1 and 120")


@dataclass(frozen=True)
class LifecycleSpec:
    activity: Step = ANY_EVENT
    granularity: Granularity = "week"

    def __post_init__(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; use day, week or month")


# --------------------------------------------------------------------------- periods


def period_expr(t: ibis.Table, granularity: str) -> ibis.expr.types.IntegerValue:
    """The period index of each row of `t` (days and weeks by integer arithmetic on `ts_ms`; months from
    the UTC timestamp `ts`, both engines running in UTC: see `_utc`)."""
    days = (t.ts_ms // DAY_MS).cast("int64")
    if granularity == "day":
        return days
    if granularity == "week":
        return ((days + 3) // 7).cast("int64")  # 1970-01-01 was a Thursday: weeks start on Monday
    return (t.ts.year() * 12 + t.ts.month() - 1).cast("int64")


def _utc(lt: LakeTables) -> None:
    """Calendar parts in UTC on DuckDB too (Spark's session is UTC; DuckDB's default is the local zone)."""
    if lt.engine == "duckdb":
        lt.backend.raw_sql("SET TimeZone = 'UTC'")


def period_of(ms: int, granularity: str) -> int:
    """The period index of one instant (Python twin of `period_expr`)."""
    days = ms // DAY_MS
    if granularity == "day":
        return days
    if granularity == "week":
        return (days + 3) // 7
    d = datetime.fromtimestamp(ms / 1000, UTC)
    return d.year * 12 + d.month - 1


def period_start(index: int, granularity: str) -> date:
    epoch = date(1970, 1, 1)
    if granularity == "day":
        return epoch + timedelta(days=index)
    if granularity == "week":
        return epoch + timedelta(days=7 * index - 3)
    return date(index // 12, index % 12 + 1, 1)


def _events(lt: LakeTables, f: flt.Filters) -> ibis.Table:
    """Events of known customers with every filter except the period start (history counts)."""
    _utc(lt)
    ev = flt.apply(lt, lt.events, f, period=False)
    ev = ev.filter(ev.unit.notnull())
    if f.end_ms is not None:
        ev = ev.filter(ev.ts_ms < f.end_ms)
    return ev


def _last_started(as_of_ms: int, f: flt.Filters, granularity: str) -> int:
    end = f.end_ms if f.end_ms is not None else as_of_ms
    return period_of(end - 1, granularity)


# --------------------------------------------------------------------------- retention


def retention_expression(lt: LakeTables, spec: RetentionSpec, f: flt.Filters) -> ibis.Table:
    """Customers by (cohort, offset): offset 0 is the cohort size; for "on" the customers back in period
    `cohort + offset`, for "on or after" those whose last return is `offset` periods after (capped)."""
    ev = _retention_events(lt, spec, f)
    return _retention_from(ev, spec, f)


def _retention_events_key(spec: RetentionSpec, f: flt.Filters) -> tuple[Any, ...]:
    return ("retention-events", spec.cohort, spec.returning, spec.granularity, f)


def _retention_events(lt: LakeTables, spec: RetentionSpec, f: flt.Filters) -> ibis.Table:
    """Cohort and return events with their period: read by both sides, so on DuckDB a temp table."""
    _utc(lt)

    def build() -> ibis.Table:
        ev = _events(lt, f)
        is_cohort, is_return = match(ev, spec.cohort), match(ev, spec.returning)
        ev = ev.filter(is_cohort | is_return)
        return ev.select(
            "unit", "ts_ms", period=period_expr(ev, spec.granularity), is_cohort=is_cohort, is_return=is_return
        )

    return materialise(lt, _retention_events_key(spec, f), build)


def _retention_from(ev: ibis.Table, spec: RetentionSpec, f: flt.Filters) -> ibis.Table:
    c = ev.filter(ev.is_cohort)
    if spec.cohort_type == "first_time":
        # the period is monotonic in time: the first event's period is the smallest one
        first = c.group_by("unit").aggregate(first_ms=c.ts_ms.min(), cohort=c.period.min())
        if f.start_ms is not None:
            first = first.filter(first.first_ms >= f.start_ms)
        cohorts = first.select("unit", "cohort")
    else:
        if f.start_ms is not None:
            c = c.filter(c.ts_ms >= f.start_ms)
        cohorts = c.select("unit", cohort=c.period).distinct()
    r = ev.filter(ev.is_return)
    returns = r.select(r_unit=r.unit, r_period=r.period).distinct()
    sizes = cohorts.group_by("cohort").aggregate(customers=cohorts.count())
    sizes = sizes.select("cohort", offset=ibis.literal(0, "int64"), customers=sizes.customers)
    j = cohorts.join(returns, [cohorts.unit == returns.r_unit, returns.r_period > cohorts.cohort])
    j = j.mutate(offset=(j.r_period - j.cohort).cast("int64"))
    if spec.mode == "on":
        j = j.filter(j.offset <= spec.periods)
        retained = j.group_by(["cohort", "offset"]).aggregate(customers=j.count())
    else:
        # each customer of a cohort is retained in every period up to their last return
        last = j.group_by(["unit", "cohort"]).aggregate(reach=j.offset.max())
        last = last.mutate(offset=ibis.least(last.reach, spec.periods).cast("int64"))
        retained = last.group_by(["cohort", "offset"]).aggregate(customers=last.count())
    return sizes.union(retained.select("cohort", "offset", "customers"), distinct=False)


def run_retention(lt: LakeTables, spec: RetentionSpec, f: flt.Filters, as_of_ms: int) -> dict[str, Any]:
    # the events table first (the matrix's SQL, compiled once per spec and filters, reads it by name)
    ev = _retention_events(lt, spec, f)
    key = ("retention", spec, f, _retention_events_key(spec, f))
    got = lt.execute(materialise(lt, key, lambda: _retention_from(ev, spec, f))).to_pylist()
    sizes = {int(r["cohort"]): int(r["customers"]) for r in got if r["offset"] == 0}
    counts = {(int(r["cohort"]), int(r["offset"])): int(r["customers"]) for r in got if r["offset"] != 0}
    last = _last_started(as_of_ms, f, spec.granularity)
    cohorts = []
    rows = []
    for cohort in sorted(sizes):
        size = sizes[cohort]
        values: list[int | None] = [size]
        for k in range(1, spec.periods + 1):
            if cohort + k > last:
                values.append(None)
            elif spec.mode == "on":
                values.append(counts.get((cohort, k), 0))
            else:  # on or after: retained at k when their last return is k or later
                values.append(sum(n for (c, reach), n in counts.items() if c == cohort and reach >= k))
        rates = [None if v is None else round(v / size, 6) for v in values]
        label = period_start(cohort, spec.granularity).isoformat()
        cohorts.append({"cohort": label, "size": size, "retained": values, "rates": rates})
        for k, (v, rate) in enumerate(zip(values, rates, strict=True)):
            rows.append({"cohort": label, "size": size, "period": k, "customers": v, "rate": rate})
    return {
        "cohort_event": spec.cohort.name,
        "return_event": spec.returning.name,
        "cohort_type": spec.cohort_type,
        "mode": spec.mode,
        "granularity": spec.granularity,
        "periods": list(range(spec.periods + 1)),
        "cohorts": cohorts,
        "customers": sum(sizes.values()),
        "rows": rows,
    }


# --------------------------------------------------------------------------- lifecycle


def lifecycle_expression(lt: LakeTables, spec: LifecycleSpec, f: flt.Filters) -> ibis.Table:
    """Customers per (period, status): new, returning, resurrecting (active rows) and dormant."""
    ev = _events(lt, f)
    ev = ev.filter(match(ev, spec.activity))
    active = ev.select("unit", period=period_expr(ev, spec.granularity)).distinct()
    first = active.group_by(f_unit=active.unit).aggregate(first=active.period.min())
    prev = active.select(p_unit=active.unit, p_period=active.period)
    a = active.join(first, active.unit == first.f_unit)
    a = a.left_join(prev, [a.unit == prev.p_unit, prev.p_period == a.period - 1])
    status = ibis.ifelse(
        a.period == a.first, "new", ibis.ifelse(a.p_period.notnull(), "returning", "resurrecting")
    ).name("status")
    a = a.select(period=a.period, status=status)
    nxt = active.select(n_unit=active.unit, n_period=active.period)
    d = active.left_join(nxt, [active.unit == nxt.n_unit, nxt.n_period == active.period + 1])
    d = d.filter(d.n_period.isnull()).select(period=d.period + 1, status=ibis.literal("dormant"))
    both = a.union(d, distinct=False)
    return both.group_by(["period", "status"]).aggregate(customers=both.count())


def run_lifecycle(lt: LakeTables, spec: LifecycleSpec, f: flt.Filters, as_of_ms: int) -> dict[str, Any]:
    g = spec.granularity
    got = {
        (int(r["period"]), r["status"]): int(r["customers"])
        for r in lt.execute(lifecycle_expression(lt, spec, f)).to_pylist()
    }
    last = _last_started(as_of_ms, f, g)
    if f.start_ms is not None:
        first = period_of(f.start_ms, g)
    else:
        first = min((p for p, s in got if s != "dormant"), default=last + 1)
    first = max(first, last - MAX_LIFECYCLE_PERIODS + 1)
    periods = []
    rows = []
    for p in range(first, last + 1):
        entry: dict[str, Any] = {"period": period_start(p, g).isoformat()}
        for s in LIFECYCLE_STATES:
            entry[s] = got.get((p, s), 0)
        entry["active"] = entry["new"] + entry["returning"] + entry["resurrecting"]
        periods.append(entry)
        rows.append(dict(entry))
    return {
        "event": spec.activity.name,
        "granularity": g,
        "states": list(LIFECYCLE_STATES),
        "periods": periods,
        "rows": rows,
    }

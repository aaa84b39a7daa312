"""Filters every analysis accepts: period, channel, device type, source / UTM campaign, location, segment.

They restrict the events an analysis sees (an Ibis predicate, identical on every engine).
Location matches the store id of an event, or every store of a city (through the locations
snapshot). Segment keeps the customers who are members of any of the given segments now (the
lake's `segment_members` snapshot, each member mapped to its cluster at query time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import ibis

from omnijourney.analytics.engine import LakeTables


def to_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


@dataclass(frozen=True)
class Filters:
    #: inclusive start and exclusive end of the period, in epoch milliseconds
    start_ms: int | None = None
    end_ms: int | None = None
    channels: tuple[str, ...] = ()
    device_types: tuple[str, ...] = ()
    utm_sources: tuple[str, ...] = ()
    utm_campaigns: tuple[str, ...] = ()
    stores: tuple[str, ...] = ()
    cities: tuple[str, ...] = ()
    segments: tuple[str, ...] = ()
    extra: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {}
        if self.start_ms is not None:
            out["start"] = datetime.fromtimestamp(self.start_ms / 1000, UTC).isoformat()
        if self.end_ms is not None:
            out["end"] = datetime.fromtimestamp(self.end_ms / 1000, UTC).isoformat()
        for name in ("channels", "device_types", "utm_sources", "utm_campaigns", "stores", "cities", "segments"):
            if getattr(self, name):
                out[name] = list(getattr(self, name))
        return out


def apply(lt: LakeTables, events: ibis.Table, f: Filters, *, period: bool = True) -> ibis.Table:
    """`events` restricted by every filter (the period too unless `period=False`)."""
    preds = []
    if period and f.start_ms is not None:
        preds.append(events.ts_ms >= f.start_ms)
    if period and f.end_ms is not None:
        preds.append(events.ts_ms < f.end_ms)
    if f.channels:
        preds.append(events.channel.isin(list(f.channels)))
    if f.device_types:
        preds.append(events.device_type.isin(list(f.device_types)))
    if f.utm_sources:
        preds.append(events.utm_source.isin(list(f.utm_sources)))
    if f.utm_campaigns:
        preds.append(events.utm_campaign.isin(list(f.utm_campaigns)))
    if f.stores and f.cities:
        raise ValueError("filter by stores or by cities, not both")
    if f.stores:
        preds.append(events.store_id.isin(list(f.stores)))
    if f.cities:
        codes = lt.locations.filter(lt.locations.city.isin(list(f.cities))).code
        preds.append(events.store_id.isin(codes))
    if f.segments:
        preds.append(events.unit.isin(segment_units(lt, f.segments)))
    return events.filter(*preds) if preds else events


def segment_units(lt: LakeTables, segments: tuple[str, ...]) -> ibis.Column:
    """The clusters (canonical profiles) that are members of any of `segments` (a column to `isin`)."""
    if lt.segment_members is None:
        raise ValueError("this lake has no segment memberships; run the export again")
    m = lt.segment_members.filter(lt.segment_members.segment_key.isin(list(segments)))
    idm = lt.identity_map.select(s_profile="profile_id", s_canonical="canonical_id")
    j = m.left_join(idm, m.profile_id == idm.s_profile)
    return j.select(s_unit=j.s_canonical.coalesce(j.profile_id)).s_unit

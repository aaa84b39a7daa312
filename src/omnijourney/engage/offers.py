"""Offers defined once, evaluated by one function for every channel, redeemed within limits.

Eligibility: active, inside its period, the channel allowed (none listed: all), the profile in
its segment (if any), the SKU among its products (if both are given), not exhausted, and the
profile below its per-profile limit. Eligible offers are ordered by priority (then key), so web,
app, POS, agent and e-mail show the same best offer to the same customer.

Limits are held by the database: `redeemed` is incremented by a guarded UPDATE and CHECKed
against `max_redemptions`; a profile's redemptions are numbered 1..per_profile_limit with a
UNIQUE (offer, profile, seq); the idempotency key is UNIQUE, so a retried redemption returns
the first one instead of counting twice.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from omnijourney.engage.models import Offer, OfferRedemption, Segment, SegmentMember
from omnijourney.engage.schemas import OfferIn, RedeemIn
from omnijourney.engage.service import SegmentError
from omnijourney.identity import service as identity
from omnijourney.store import dialect

OFFERS = Offer.__table__
REDEMPTIONS = OfferRedemption.__table__
MEMBERS = SegmentMember.__table__
SEGMENTS = Segment.__table__

OfferError = SegmentError


def _dict(r: Any) -> dict[str, Any]:
    return {
        "key": r.key,
        "name": r.name,
        "description": r.description,
        "segment": r.segment_key,
        "channels": r.channels,
        "skus": r.skus,
        "starts_at": r.starts_at,
        "ends_at": r.ends_at,
        "priority": r.priority,
        "max_redemptions": r.max_redemptions,
        "per_profile_limit": r.per_profile_limit,
        "redeemed": r.redeemed,
        "benefit": r.benefit,
        "active": bool(r.active),
        "version": r.version,
        "updated_at": r.updated_at,
    }


def _values(offer: OfferIn) -> dict[str, Any]:
    return {
        "name": offer.name,
        "description": offer.description,
        "segment_key": offer.segment,
        "channels": offer.channels,
        "skus": sorted(set(offer.skus)),
        "starts_at": offer.starts_at,
        "ends_at": offer.ends_at,
        "priority": offer.priority,
        "max_redemptions": offer.max_redemptions,
        "per_profile_limit": offer.per_profile_limit,
        "benefit": offer.benefit,
    }


def put_offer(*, conn: Connection, offer: OfferIn, actor: str, now: datetime) -> dict[str, Any]:
    """Create or replace an offer (the version grows); a limit below what was redeemed is refused."""
    if offer.segment is not None:
        seg = conn.execute(sa.select(SEGMENTS.c.active).where(SEGMENTS.c.key == offer.segment)).first()
        if seg is None or not seg.active:
            raise OfferError(400, "invalid_offer", f"segment {offer.segment!r} does not exist")
    row = conn.execute(dialect.for_update(sa.select(OFFERS).where(OFFERS.c.key == offer.key), conn)).first()
    values = {**_values(offer), "updated_at": now, "updated_by": actor[:100], "active": True}
    if row is None:
        conn.execute(sa.insert(OFFERS).values(key=offer.key, redeemed=0, version=1, **values))
    else:
        if offer.max_redemptions is not None and offer.max_redemptions < row.redeemed:
            raise OfferError(
                409, "limit_below_redeemed", f"{row.redeemed} already redeemed; max_redemptions cannot be lower"
            )
        conn.execute(sa.update(OFFERS).where(OFFERS.c.key == offer.key).values(version=row.version + 1, **values))
    return get_offer(conn=conn, key=offer.key)


def get_offer(*, conn: Connection, key: str) -> dict[str, Any]:
    row = conn.execute(sa.select(OFFERS).where(OFFERS.c.key == key)).first()
    if row is None:
        raise OfferError(404, "not_found", f"no offer {key!r}")
    return _dict(row)


def list_offers(*, conn: Connection) -> list[dict[str, Any]]:
    return [_dict(r) for r in conn.execute(sa.select(OFFERS).order_by(OFFERS.c.priority.desc(), OFFERS.c.key))]


def eligible_offers(
    *, conn: Connection, profile_id: int, channel: str, now: datetime, sku: str | None = None
) -> dict[str, Any]:
    root = identity.canonical_id(conn=conn, profile_id=profile_id)
    if root is None:
        raise OfferError(404, "not_found", f"no profile {profile_id}")
    segments = {r[0] for r in conn.execute(sa.select(MEMBERS.c.segment_key).where(MEMBERS.c.profile_id == root))}
    used = dict(
        conn.execute(
            sa.select(REDEMPTIONS.c.offer_key, sa.func.count())
            .where(REDEMPTIONS.c.profile_id == root)
            .group_by(REDEMPTIONS.c.offer_key)
        ).all()
    )
    out = []
    for r in conn.execute(sa.select(OFFERS).where(OFFERS.c.active).order_by(OFFERS.c.priority.desc(), OFFERS.c.key)):
        if r.starts_at is not None and now < r.starts_at:
            continue
        if r.ends_at is not None and now >= r.ends_at:
            continue
        if r.channels and channel not in r.channels:
            continue
        if r.segment_key is not None and r.segment_key not in segments:
            continue
        if sku is not None and r.skus and sku not in r.skus:
            continue
        if r.max_redemptions is not None and r.redeemed >= r.max_redemptions:
            continue
        if int(used.get(r.key, 0)) >= r.per_profile_limit:
            continue
        out.append(_dict(r))
    return {"profile_id": root, "channel": channel, "best": out[0] if out else None, "offers": out}


def redeem(*, conn: Connection, key: str, body: RedeemIn, actor: str, now: datetime) -> dict[str, Any]:
    """Record one redemption within the limits (409 when exhausted / used up); a retry with the
    same idempotency key returns the first redemption."""
    done = conn.execute(sa.select(REDEMPTIONS).where(REDEMPTIONS.c.idempotency_key == body.idempotency_key)).first()
    if done is not None:
        if done.offer_key != key:
            raise OfferError(409, "idempotency_conflict", "that idempotency key was used for another offer")
        return {**dict(done._mapping), "duplicate": True}
    root = identity.canonical_id(conn=conn, profile_id=body.profile_id)
    if root is None:
        raise OfferError(404, "not_found", f"no profile {body.profile_id}")
    eligible = eligible_offers(conn=conn, profile_id=root, channel=body.channel, now=now)
    if key not in {o["key"] for o in eligible["offers"]}:
        get_offer(conn=conn, key=key)
        raise OfferError(409, "not_eligible", f"offer {key!r} is not available to profile {root} in {body.channel}")
    taken = conn.execute(
        sa.update(OFFERS)
        .where(
            OFFERS.c.key == key,
            OFFERS.c.active,
            sa.or_(OFFERS.c.max_redemptions.is_(None), OFFERS.c.redeemed < OFFERS.c.max_redemptions),
        )
        .values(redeemed=OFFERS.c.redeemed + 1)
    ).rowcount
    if taken == 0:
        raise OfferError(409, "exhausted", f"offer {key!r} has no redemptions left")
    limit = conn.execute(sa.select(OFFERS.c.per_profile_limit).where(OFFERS.c.key == key)).scalar_one()
    seq = (
        conn.execute(
            sa.select(sa.func.count()).where(REDEMPTIONS.c.offer_key == key, REDEMPTIONS.c.profile_id == root)
        ).scalar_one()
        + 1
    )
    if seq > limit:
        raise OfferError(409, "used_up", f"profile {root} has used offer {key!r} {limit} time(s)")
    try:
        with conn.begin_nested():
            rid = conn.execute(
                sa.insert(REDEMPTIONS)
                .values(
                    offer_key=key,
                    profile_id=root,
                    seq=seq,
                    channel=body.channel,
                    order_ref=body.order_ref,
                    idempotency_key=body.idempotency_key,
                    redeemed_at=now,
                    actor=actor[:100],
                )
                .returning(REDEMPTIONS.c.id)
            ).scalar_one()
    except IntegrityError as exc:  # the same profile redeeming concurrently: one wins
        raise OfferError(409, "used_up", f"profile {root} is redeeming offer {key!r} concurrently") from exc
    row = conn.execute(sa.select(REDEMPTIONS).where(REDEMPTIONS.c.id == rid)).one()
    return {**dict(row._mapping), "duplicate": False}

"""Console users, sessions, login throttling, and the reads the console pages are made of.

Plain keyword-only functions taking `conn`; the caller owns the transaction. Passwords are
hashed with argon2id (argon2-cffi); session cookies carry 256-bit random tokens of which only
the SHA-256 is stored, so a leaked database does not leak live sessions.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.engine import Connection

from omnijourney.access import service as access
from omnijourney.access.service import ROLES
from omnijourney.commerce import service as commerce
from omnijourney.commerce.config import CommerceConfig
from omnijourney.identity import service as identity
from omnijourney.identity.normalise import country_calling_code
from omnijourney.identity.rules import IdentityRules
from omnijourney.profiles import service as profiles
from omnijourney.profiles.config import ProfileConfig
from omnijourney.web.models import ConsoleLoginAttempt, ConsoleSession, ConsoleUser

USERS = ConsoleUser.__table__
SESSIONS = ConsoleSession.__table__
ATTEMPTS = ConsoleLoginAttempt.__table__

SESSION_TTL = timedelta(hours=12)
#: failed logins allowed per username, and per client address, within THROTTLE_WINDOW
MAX_FAILURES_PER_USER = 5
MAX_FAILURES_PER_CLIENT = 20
THROTTLE_WINDOW = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 10
USERNAME = re.compile(r"^[a-z0-9][a-z0-9._@-]{1,63}$")

_hasher = PasswordHasher()
_dummy: list[str] = []


def _dummy_hash() -> str:
    """Verified against when the username is unknown, so both cases take the same time.

    Made on first use, not at import: an argon2 hash takes a noticeable moment, and every API
    process (`serve --workers N`) imports this module while starting."""
    if not _dummy:
        _dummy.append(_hasher.hash(secrets.token_urlsafe(16)))
    return _dummy[0]


class ConsoleError(ValueError):
    """A refused request: HTTP status, a stable code, a human message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    role: str
    home_location: str | None
    active: bool


@dataclass(frozen=True, slots=True)
class Session:
    id: int
    user: User
    csrf_token: str
    expires_at: datetime


def _user(r: Any) -> User:
    return User(id=r.id, username=r.username, role=r.role, home_location=r.home_location, active=bool(r.active))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ------------------------------------------------------------------ users


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ConsoleError(422, "weak_password", f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > 1024:
        raise ConsoleError(422, "invalid_password", "a password may have at most 1024 characters")


def _check_role(role: str, home_location: str | None) -> None:
    if role not in ROLES:
        raise ConsoleError(422, "unknown_role", f"unknown role {role!r}; one of: {', '.join(ROLES)}")
    if home_location is not None and not re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", home_location):
        raise ConsoleError(422, "invalid_location", "a home store is a location code (letters, digits, . _ : -)")


def create_user(
    *, conn: Connection, username: str, role: str, password: str, now: datetime, home_location: str | None = None
) -> User:
    name = username.strip().lower()
    if not USERNAME.fullmatch(name):
        raise ConsoleError(
            422, "invalid_username", "a username has 2-64 characters: letters, digits, '.', '_', '@', '-'"
        )
    home_location = home_location or None
    _check_role(role, home_location)
    _check_password(password)
    if conn.execute(sa.select(USERS.c.id).where(USERS.c.username == name)).first():
        raise ConsoleError(409, "username_taken", f"a user named {name!r} exists already")
    row = conn.execute(
        sa.insert(USERS)
        .values(
            username=name,
            role=role,
            home_location=home_location,
            password_hash=_hasher.hash(password),
            active=True,
            created_at=now,
            updated_at=now,
        )
        .returning(*USERS.c)
    ).one()
    return _user(row)


def get_user(*, conn: Connection, user_id: int) -> User | None:
    row = conn.execute(sa.select(USERS).where(USERS.c.id == user_id)).first()
    return _user(row) if row else None


def user_by_name(*, conn: Connection, username: str) -> User | None:
    row = conn.execute(sa.select(USERS).where(USERS.c.username == username.strip().lower())).first()
    return _user(row) if row else None


def list_users(*, conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(sa.select(USERS).order_by(USERS.c.username)).all()
    keys = ("id", "username", "role", "home_location", "created_at", "last_login_at")
    return [{**{k: getattr(r, k) for k in keys}, "active": bool(r.active)} for r in rows]


def update_user(
    *,
    conn: Connection,
    user_id: int,
    now: datetime,
    role: str | None = None,
    home_location: str | None = None,
    active: bool | None = None,
    password: str | None = None,
) -> User:
    """Change a user; deactivating, a new role or a new password ends the user's sessions."""
    current = get_user(conn=conn, user_id=user_id)
    if current is None:
        raise ConsoleError(404, "not_found", f"no user {user_id}")
    values: dict[str, Any] = {"updated_at": now}
    if role is not None or home_location is not None:
        new_role = role or current.role
        _check_role(new_role, home_location or None)
        values["role"] = new_role
        values["home_location"] = home_location or None
    if active is not None:
        values["active"] = active
    if password:
        _check_password(password)
        values["password_hash"] = _hasher.hash(password)
    conn.execute(sa.update(USERS).where(USERS.c.id == user_id).values(**values))
    if (
        password
        or active is False
        or ("role" in values and values["role"] != current.role)
        or ("home_location" in values and values["home_location"] != current.home_location)
    ):
        revoke_sessions(conn=conn, user_id=user_id, now=now)
    user = get_user(conn=conn, user_id=user_id)
    assert user is not None
    return user


def count_admins(*, conn: Connection) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.count()).select_from(USERS).where(USERS.c.role == "admin", USERS.c.active)
        ).scalar_one()
    )


# ------------------------------------------------------------------ login, throttling, sessions


def throttled(*, conn: Connection, username: str, client: str, now: datetime) -> bool:
    """Too many recent failures for this username or from this client address."""
    since = now - THROTTLE_WINDOW
    name = username.strip().lower()[:64]

    def failures(col: Any, value: str) -> int:
        # failures after the last success of that key count
        last_ok = conn.execute(
            sa.select(sa.func.max(ATTEMPTS.c.at)).where(col == value, ATTEMPTS.c.succeeded, ATTEMPTS.c.at >= since)
        ).scalar_one()
        start = max(since, last_ok) if last_ok else since
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(ATTEMPTS)
                .where(col == value, sa.not_(ATTEMPTS.c.succeeded), ATTEMPTS.c.at >= start)
            ).scalar_one()
        )

    return (
        failures(ATTEMPTS.c.username, name) >= MAX_FAILURES_PER_USER
        or failures(ATTEMPTS.c.client, client[:64]) >= MAX_FAILURES_PER_CLIENT
    )


def record_attempt(*, conn: Connection, username: str, client: str, succeeded: bool, now: datetime) -> None:
    conn.execute(
        sa.insert(ATTEMPTS).values(
            username=username.strip().lower()[:64], client=client[:64], succeeded=succeeded, at=now
        )
    )
    if succeeded:  # old rows are useless for throttling; keep the table small
        conn.execute(sa.delete(ATTEMPTS).where(ATTEMPTS.c.at < now - THROTTLE_WINDOW * 4))


def login_candidate(*, conn: Connection, username: str) -> tuple[User | None, str]:
    """The user of this name (None if unknown) and the hash to verify against (a dummy one if unknown)."""
    row = conn.execute(sa.select(USERS).where(USERS.c.username == username.strip().lower()[:64])).first()
    return (_user(row), row.password_hash) if row is not None else (None, _dummy_hash())


def verify_password(stored_hash: str, password: str) -> bool:
    """Argon2 verification; deliberately slow, so callers run it outside any transaction."""
    try:
        return bool(_hasher.verify(stored_hash, password))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def rehash_if_needed(*, conn: Connection, user: User, stored_hash: str, password: str) -> None:
    """Upgrade a verified password's hash when the argon2 parameters changed."""
    if _hasher.check_needs_rehash(stored_hash):
        conn.execute(sa.update(USERS).where(USERS.c.id == user.id).values(password_hash=_hasher.hash(password)))


def authenticate(*, conn: Connection, username: str, password: str) -> User | None:
    """The active user with this password, or None (taking as long whether or not the user exists)."""
    user, stored = login_candidate(conn=conn, username=username)
    if not verify_password(stored, password) or user is None or not user.active:
        return None
    rehash_if_needed(conn=conn, user=user, stored_hash=stored, password=password)
    return user


def start_session(*, conn: Connection, user: User, now: datetime) -> str:
    """A new session; returns the cookie value (shown to the browser only)."""
    token = secrets.token_urlsafe(32)
    conn.execute(
        sa.insert(SESSIONS).values(
            token_hash=hash_token(token),
            user_id=user.id,
            csrf_token=secrets.token_urlsafe(32),
            created_at=now,
            expires_at=now + SESSION_TTL,
        )
    )
    conn.execute(sa.update(USERS).where(USERS.c.id == user.id).values(last_login_at=now))
    # expired sessions of this user are of no use any more
    conn.execute(sa.delete(SESSIONS).where(SESSIONS.c.user_id == user.id, SESSIONS.c.expires_at < now))
    return token


# built once: every console request looks its session up
_SESSION_OF_TOKEN = (
    sa.select(SESSIONS.c.id, SESSIONS.c.csrf_token, SESSIONS.c.expires_at, USERS)
    .join(USERS, USERS.c.id == SESSIONS.c.user_id)
    .where(
        SESSIONS.c.token_hash == sa.bindparam("token_hash"),
        SESSIONS.c.revoked_at.is_(None),
        SESSIONS.c.expires_at > sa.bindparam("now"),
        USERS.c.active,
    )
)


def session_for_token(*, conn: Connection, token: str, now: datetime) -> Session | None:
    row = conn.execute(_SESSION_OF_TOKEN, {"token_hash": hash_token(token), "now": now}).first()
    if row is None:
        return None
    user = User(id=row.id_1, username=row.username, role=row.role, home_location=row.home_location, active=True)
    return Session(id=row.id, user=user, csrf_token=row.csrf_token, expires_at=row.expires_at)


def end_session(*, conn: Connection, token: str, now: datetime) -> bool:
    res = conn.execute(
        sa.update(SESSIONS)
        .where(SESSIONS.c.token_hash == hash_token(token), SESSIONS.c.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return res.rowcount == 1


def revoke_sessions(*, conn: Connection, user_id: int, now: datetime) -> int:
    res = conn.execute(
        sa.update(SESSIONS).where(SESSIONS.c.user_id == user_id, SESSIONS.c.revoked_at.is_(None)).values(revoked_at=now)
    )
    return int(res.rowcount)


# ------------------------------------------------------------------ what the pages show

#: identifier types that search by exact lookup (the value is normalised by the identity rules)
LOOKUP_TYPES = ("email", "phone", "loyalty_card")


def find_customers(
    *, conn: Connection, query: str, rules: IdentityRules, config: ProfileConfig, limit: int = 20
) -> list[dict[str, Any]]:
    """Customers matching an e-mail, phone, loyalty card, name, user id (prefix) or an order number.

    Exact identifiers first (normalised as ingestion does: "+420 777...", a card with spaces),
    then the order number, then prefix matches; every branch is one indexed statement and the
    result cards are built set-based (`profiles.summaries`)."""
    q = query.strip()
    ids: list[int] = []
    members: dict[int, list[int]] = {}
    types = [t for t in LOOKUP_TYPES if t in rules.identifier_types]  # a configuration may lack one
    for found in identity.lookup_clusters(conn=conn, rules=rules, identifiers=[(t, q) for t in types]):
        if found is not None and found.root not in ids:
            ids.append(found.root)
            members[found.root] = found.members
    order_hit: dict[int, str] = {}
    if "@" not in q:  # an e-mail address is never an order number
        found = commerce.order_owner(conn=conn, ref=q)
        if found is not None:
            order_ref, root = found
            if root is not None:
                order_hit[root] = order_ref
                if root not in ids:
                    ids.append(root)
    if len(q) >= 2 and len(ids) < limit:
        code = country_calling_code(rules.default_phone_region)
        for pid in profiles.search(conn=conn, query=q, limit=limit, phone_country_code=code):
            if pid not in ids:
                ids.append(pid)
    results = profiles.summaries(conn=conn, root_ids=ids[:limit], config=config, clusters=members)
    for r in results:
        r["matched_order"] = order_hit.get(r["id"])
    return results


def suggestions(*, conn: Connection, bought: set[str], browsed: list[str], limit: int = 6) -> list[dict[str, Any]]:
    """Next best products: accessories of what they bought, then of what they browsed, never already bought.

    One statement for both lists: related products come back ordered by (sku, related sku), and
    each list is walked in its own order."""
    related: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in commerce.related_products(conn=conn, skus=[*bought, *browsed]):
        related[item["for_sku"]].append(item)
    out: list[dict[str, Any]] = []
    seen = set(bought)
    for reason, skus in (("bought", sorted(bought)), ("browsed", browsed)):
        for item in (i for sku in sorted(set(skus)) for i in related.get(sku, [])):
            if item["sku"] in seen:
                continue
            seen.add(item["sku"])
            out.append({**item, "reason": reason})
            if len(out) >= limit:
                return out
    return out


def _skus_of(props: dict[str, Any]) -> list[str]:
    skus = []
    if isinstance(props.get("sku"), str):
        skus.append(props["sku"])
    for p in props.get("products") or []:
        if isinstance(p, dict) and isinstance(p.get("sku"), str):
            skus.append(p["sku"])
    return skus


def customer_view(
    *,
    conn: Connection,
    profile_id: int,
    profile_config: ProfileConfig,
    commerce_config: CommerceConfig,
    timeline_limit: int = 30,
    cursor: str | None = None,
) -> dict[str, Any] | None:
    """Everything the 360 page shows, from the profile and commerce services.

    The cluster is resolved once and handed to every read (no service looks it up again), orders
    come set-based, the active carts are read once for the cart signal and the current cart, and
    the loyalty figures are the ones `profile_360` already summed."""
    cluster = identity.cluster(conn=conn, profile_id=profile_id)
    if cluster is None:
        return None
    root, members = cluster.root, cluster.members
    carts = commerce.active_carts(conn=conn, member_ids=members)  # for the cart signal and the cart
    view = profiles.profile_360(
        conn=conn, profile_id=profile_id, config=profile_config, cluster=cluster, active_carts=carts
    )
    if view is None:
        return None
    items, next_cursor = profiles.timeline(conn=conn, member_ids=members, limit=timeline_limit, cursor=cursor)
    orders = commerce.orders_of_profile(conn=conn, profile_id=root, limit=10, members=members)
    summary = view["computed"].get("loyalty") or {"balance": 0, "lifetime_earned": 0}
    loyalty = {
        "profile_id": root,
        "balance": summary["balance"],
        "lifetime_earned": summary["lifetime_earned"],
        "tier": commerce_config.loyalty.tier_for(summary["lifetime_earned"]),
    }
    cart = commerce.current_cart(conn=conn, profile_id=root, members=members, carts=carts)
    bought = {line["sku"] for o in orders for line in o["lines"]}
    browsed: list[str] = []
    recent = profiles.recent_properties(
        conn=conn, member_ids=members, events=["Product Viewed", "Product Added"], limit=100
    )
    for props in recent + [{"sku": line["sku"]} for line in (cart or {}).get("lines", [])]:
        for sku in _skus_of(props):
            if sku not in browsed and sku not in bought:
                browsed.append(sku)
    traits = view["traits"]
    name = traits.get("name") or " ".join(x for x in (traits.get("first_name"), traits.get("last_name")) if x)
    return {
        **view,
        "members": members,
        "name": name or None,
        "timeline": items,
        "next_cursor": next_cursor,
        "orders": orders,
        "loyalty": loyalty,
        "cart": cart,
        "suggestions": suggestions(conn=conn, bought=bought, browsed=browsed),
        "preferences": preferences(traits, view["computed"]),
        "source_names": access.source_names(conn=conn),
    }


def preferences(traits: dict[str, Any], computed: dict[str, Any]) -> list[tuple[str, Any]]:
    """Labelled preferences: sizes and similar traits, favourite store, preferred channel."""
    out: list[tuple[str, Any]] = []
    for key, value in sorted(traits.items()):
        if value in (None, "", [], {}):
            continue
        if "size" in key or key in ("preferred_language", "language", "favourite_category", "favorite_category"):
            out.append((key.replace("_", " "), value))
    if computed.get("preferred_store"):
        out.append(("favourite store", computed["preferred_store"]))
    if computed.get("preferred_channel"):
        out.append(("preferred channel", computed["preferred_channel"]))
    return out


def timeline_page(
    *, conn: Connection, profile_id: int, cursor: str | None, limit: int = 30, after_event_id: int | None = None
) -> tuple[int, list[dict[str, Any]], str | None] | None:
    cluster = identity.cluster(conn=conn, profile_id=profile_id)
    if cluster is None:
        return None
    items, next_cursor = profiles.timeline(
        conn=conn, member_ids=cluster.members, limit=limit, cursor=cursor, after_event_id=after_event_id
    )
    return cluster.root, items, next_cursor

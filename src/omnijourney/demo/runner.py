"""`omnijourney demo`: build the demo retailer, send it through the real HTTP API, serve it.

The demo goes through the same doors a retailer's integrations would: it creates the
sources (one write key per channel system), starts the real server, and posts every
customer's journey to `/v1/batch` with Basic auth, exactly as the Segment SDKs do. It
then waits until the processing stage has caught up, prints what was loaded and keeps
serving (or stops, with `--no-serve`).

Running it again on the same data directory is safe: sources are reused by name, the
world's message ids are deterministic so nothing is stored twice, and API tokens are
created only once (they are kept in `demo-credentials.json`, readable by the owner only).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import sqlalchemy as sa
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from omnijourney.access import service as access
from omnijourney.access.service import SourceInfo
from omnijourney.config import Settings
from omnijourney.demo import commerce as demo_commerce
from omnijourney.demo import console as demo_console
from omnijourney.demo import engage as demo_engage
from omnijourney.demo import journeys as demo_journeys
from omnijourney.demo.world import DemoWorld, build_world
from omnijourney.ingest import service as ingest_service
from omnijourney.service import service as service_domain
from omnijourney.store import db, migrate

CREDENTIALS_FILE = "demo-credentials.json"
BATCH_SIZE = 100
SENDERS = 4
#: how long to keep retrying one batch the server answers 429/503 to
RETRY_FOR_SECONDS = 600.0
#: how long to wait for the processing stage to catch up
PROCESSING_TIMEOUT_SECONDS = 1800.0
#: give up waiting when the processing lag has not gone down for this long
STALL_SECONDS = 90.0


@dataclass
class DemoSummary:
    url: str
    customers: int
    #: messages the world has (and the demo sent)
    sent: int
    accepted: int
    rejected: int
    #: events stored by this run (0 when the world was loaded before)
    new_events: int
    #: events of the demo sources in the database after the run
    stored_events: int
    credentials_path: Path
    seconds: float
    per_source: dict[str, int] = field(default_factory=dict)
    sample_errors: list[str] = field(default_factory=list)


@dataclass
class _Credentials:
    path: Path
    tokens: dict[str, str]
    created: bool


def default_anchor() -> datetime:
    """Today at 00:00 UTC: the demo's journeys happen over the 90 days before it."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def run_demo(
    *,
    settings: Settings,
    customers: int,
    seed: int,
    serve_after: bool,
    console: Console,
    anchor: datetime | None = None,
) -> DemoSummary:
    started = time.monotonic()
    data_dir = Path(settings.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)

    with console.status(f"building the demo world: {customers} customers, seed {seed}"):
        world = build_world(customers=customers, seed=seed, anchor=anchor or default_anchor())
    console.print(
        f"demo world: [bold]{len(world.customers)}[/bold] customers, [bold]{world.message_count}[/bold] events "
        f"over the 90 days before {world.anchor:%Y-%m-%d}"
    )

    engine = db.create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        migrate.upgrade(engine)
        sources = ensure_sources(engine, world)
        credentials = ensure_credentials(engine, data_dir)
        url = _client_url(settings)
        console_users, users_created = demo_console.ensure_console_users(engine, _saved_console(credentials.path))
        _write_credentials(credentials, sources, url, console_users)
        if credentials.created:
            console.print(f"API tokens and write keys saved to [bold]{credentials.path}[/bold] (owner-only)")
            console.print(f"admin token (shown once): [bold]{credentials.tokens['admin']}[/bold]")
        if users_created:
            console.print(f"console users and passwords saved to [bold]{credentials.path}[/bold] (owner-only)")
            for name, u in console_users.items():
                console.print(
                    f"  console login (shown once): [bold]{name}[/bold] / [bold]{u['password']}[/bold] ({u['role']})"
                )
        before = _stored(engine, sources)

        # journeys on, with a local SMTP sink unless one is configured (before the server reads its settings)
        mail = demo_journeys.prepare(data_dir, url) if settings.run_pipeline else None
        server = DemoServer(settings, engine)
        server.start()
        try:
            with httpx.Client(
                base_url=url,
                timeout=60,
                limits=httpx.Limits(max_connections=SENDERS, max_keepalive_connections=SENDERS),
            ) as client:
                # the catalog first, so the shop's cart events build carts (commerce continuity from events)
                with console.status("loading the catalog, locations and stock"):
                    shop = demo_commerce.load_catalog(client, world, credentials.tokens["admin"])
                accepted, rejected, errors = send_world(client, world, sources, console)
                if settings.run_pipeline:
                    with console.status("waiting for the processing stage to catch up"):
                        caught_up = wait_until_processed(client)
                    if caught_up:
                        with console.status("placing orders through the commerce API"):
                            demo_commerce.place_orders(client, world, credentials.tokens, shop)
                            caught_up = wait_until_processed(client)
                        console.print(demo_commerce.describe(shop))
                        with console.status("training recommendations and refreshing segments"):
                            engaged = demo_engage.run(client, credentials.tokens["admin"])
                            caught_up = wait_until_processed(client)
                        console.print(demo_engage.describe(engaged))
                        with console.status("running journeys (consents from the e-mail platform first)"):
                            demo_journeys.import_consents(engine, world)
                            assert mail is not None
                            journeyed = demo_journeys.run(engine, data_dir, mail)
                            caught_up = wait_until_processed(client)
                        console.print(demo_journeys.describe(journeyed))
                    if not caught_up:
                        console.print(
                            "[yellow]the processing stage is not catching up (see the server log above); "
                            "the events are stored and will be processed when it recovers[/yellow]"
                        )
                    with console.status("placing today's click & collect orders"):
                        pickups = demo_console.place_pickups(client, world, credentials.tokens["admin"])
                        if caught_up:  # the lake below exports processed events only
                            caught_up = wait_until_processed(client)
                    if pickups:
                        console.print(
                            f"{len(pickups)} click & collect orders wait at the stores today "
                            f"(e.g. {pickups[0]['order']} for {pickups[0]['customer']} at {pickups[0]['store']})"
                        )
                    if caught_up and mail is not None:
                        with console.status("running journeys for today's orders (store tasks)"):
                            demo_journeys.run(engine, data_dir, mail)
                            caught_up = wait_until_processed(client)
                        _print_tasks(console, demo_journeys.store_tasks(engine))
                    if caught_up:
                        from omnijourney.analytics.demo import export_and_summarise

                        export_and_summarise(engine, data_dir, console)
                else:
                    console.print("the in-process pipeline is off; run `omnijourney worker` to process the events")
            after = _stored(engine, sources)
            summary = DemoSummary(
                url=url,
                customers=len(world.customers),
                sent=world.message_count,
                accepted=sum(accepted.values()),
                rejected=sum(rejected.values()),
                new_events=sum(after.values()) - sum(before.values()),
                stored_events=sum(after.values()),
                credentials_path=credentials.path,
                seconds=round(time.monotonic() - started, 1),
                per_source=world.counts_by_source(),
                sample_errors=errors,
            )
            _print_summary(console, world, sources, summary, accepted, rejected, before, after)
            _print_service(console, engine, url)
            if serve_after:
                console.print(f"serving on [bold]{url}[/bold]; press Ctrl-C to stop")
                server.wait()
                console.print("stopping the server")
        finally:
            server.stop()
            if mail is not None:
                mail.stop()
    finally:
        engine.dispose()
    return summary


# --------------------------------------------------------------------------- sources and credentials


def ensure_sources(engine: sa.Engine, world: DemoWorld) -> dict[str, SourceInfo]:
    """The world's sources, reused by name or created (with a fresh write key)."""
    out: dict[str, SourceInfo] = {}
    with db.write(engine) as conn:
        for spec in world.sources:
            info = access.source_by_name(conn=conn, name=spec.name)
            if info is None:
                info = access.create_source(conn=conn, name=spec.name, channel=spec.channel, trusted=spec.trusted)
            out[spec.name] = info
    return out


def ensure_credentials(engine: sa.Engine, data_dir: Path) -> _Credentials:
    """API tokens for every role, created once and kept in the credentials file.

    Tokens are stored hashed, so the file is the only copy. They are created when the file
    does not exist, or when its tokens are not valid in this database (it was reset).
    """
    path = data_dir / CREDENTIALS_FILE
    tokens: dict[str, str] | None = None
    if path.exists():
        with contextlib.suppress(OSError, ValueError, AttributeError):
            saved = json.loads(path.read_text())
            tokens = {role: str(saved["tokens"][role]) for role in access.ROLES}
        if tokens is not None:
            with db.read(engine) as conn:
                valid = all(access.principal_for_token(conn=conn, token=t) for t in tokens.values())
            tokens = tokens if valid else None
    if tokens is not None:
        return _Credentials(path, tokens, created=False)
    with db.write(engine) as conn:
        tokens = {role: access.create_token(conn=conn, role=role, name=f"demo {role}") for role in access.ROLES}
    return _Credentials(path, tokens, created=True)


def _saved_console(path: Path) -> dict[str, Any] | None:
    """The console users' passwords a previous run saved (None if there are none)."""
    with contextlib.suppress(OSError, ValueError, AttributeError, TypeError):
        saved = json.loads(path.read_text()).get("console_users")
        return saved if isinstance(saved, dict) else None
    return None


def _write_credentials(
    credentials: _Credentials,
    sources: dict[str, SourceInfo],
    url: str,
    console_users: dict[str, dict[str, Any]] | None = None,
) -> None:
    body = {
        "url": url,
        "console": f"{url}/console/login",
        "console_users": console_users or {},
        "tokens": credentials.tokens,
        "sources": {
            name: {"channel": s.channel, "trusted": s.trusted, "write_key": s.write_key} for name, s in sources.items()
        },
        "note": "API tokens (Authorization: Bearer <token>), source write keys (Basic auth username) and "
        "staff console logins of the omnijourney demo. Keep this file private.",
    }
    path = credentials.path
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask, and if the file existed with wider rights
        os.write(fd, json.dumps(body, indent=2).encode() + b"\n")
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _stored(engine: sa.Engine, sources: dict[str, SourceInfo]) -> dict[str, int]:
    with db.read(engine) as conn:
        return {name: ingest_service.count_events(conn=conn, source_id=s.id) for name, s in sources.items()}


# --------------------------------------------------------------------------- the server


def _client_url(settings: Settings) -> str:
    host = settings.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


class DemoServer:
    """The real app, served by uvicorn in a background thread of this process."""

    def __init__(self, settings: Settings, engine: sa.Engine) -> None:
        from omnijourney.app import create_app

        self.settings = settings
        app = create_app(settings, engine=engine, migrate_db=False)
        config = uvicorn.Config(
            app, host=settings.host, port=settings.port, log_level="warning", access_log=False, lifespan="on"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="omnijourney-demo-server", daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive():
                raise RuntimeError(
                    f"the server could not start on {self.settings.host}:{self.settings.port} "
                    "(is the port in use? choose another with --port)"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start within {timeout:.0f} s")
            time.sleep(0.02)

    def wait(self) -> None:
        """Serve until Ctrl-C (or until the server stops by itself)."""
        try:
            while self.thread.is_alive():
                self.thread.join(timeout=0.5)
        except KeyboardInterrupt:
            self.server.should_exit = True

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=60)


# --------------------------------------------------------------------------- sending


def _batches(world: DemoWorld) -> list[tuple[str, bytes, int]]:
    """(source, body, messages) per batch of 100, roughly in time order across sources."""
    out: list[tuple[str, str, bytes, int]] = []
    for spec in world.sources:
        msgs = world.messages.get(spec.name, [])
        for i in range(0, len(msgs), BATCH_SIZE):
            chunk = msgs[i : i + BATCH_SIZE]
            out.append((chunk[0]["timestamp"], spec.name, orjson.dumps({"batch": chunk}), len(chunk)))
    out.sort(key=lambda b: (b[0], b[1]))
    return [(name, body, n) for _ts, name, body, n in out]


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(30.0, max(0.1, float(response.headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def post_batch(client: httpx.Client, write_key: str, body: bytes, n: int) -> tuple[int, int, str | None]:
    """POST one batch, retrying on 429/503 (honouring Retry-After) and on connection errors.

    Returns (accepted, rejected, first error).
    """
    deadline = time.monotonic() + RETRY_FOR_SECONDS
    failures = 0
    while True:
        try:
            r = client.post(
                "/v1/batch",
                content=body,
                auth=(write_key, ""),
                headers={"Content-Type": "application/json"},
            )
        except httpx.TransportError:
            failures += 1
            if failures > 8 or time.monotonic() > deadline:
                raise
            time.sleep(min(5.0, 0.2 * 2**failures))
            continue
        if r.status_code in (429, 503) or r.status_code >= 500:
            failures += r.status_code not in (429, 503)
            if failures > 8 or time.monotonic() > deadline:
                r.raise_for_status()
            time.sleep(_retry_after(r) if r.status_code in (429, 503) else min(5.0, 0.2 * 2**failures))
            continue
        if r.status_code == 200:
            data = r.json()
            errors = data.get("errors") or []
            first = f"{errors[0].get('field')}: {errors[0].get('message')}" if errors else None
            return int(data.get("accepted", n)), int(data.get("rejected", 0)), first
        # a 4xx other than 429: the whole batch was refused
        return 0, n, f"HTTP {r.status_code}: {r.text[:200]}"


def send_world(
    client: httpx.Client, world: DemoWorld, sources: dict[str, SourceInfo], console: Console
) -> tuple[Counter[str], Counter[str], list[str]]:
    """Send every source's messages through `/v1/batch`; accepted and rejected per source."""
    accepted: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    errors: list[str] = []
    batches = _batches(world)
    columns = (
        TextColumn("sending events"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress, ThreadPoolExecutor(SENDERS) as pool:
        task = progress.add_task("send", total=world.message_count)
        pending: dict[Future[tuple[int, int, str | None]], tuple[str, int]] = {}
        it = iter(batches)

        def submit_next() -> bool:
            item = next(it, None)
            if item is None:
                return False
            name, body, n = item
            pending[pool.submit(post_batch, client, sources[name].write_key, body, n)] = (name, n)
            return True

        for _ in range(SENDERS * 2):  # a bounded window keeps the send order close to time order
            if not submit_next():
                break
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                name, n = pending.pop(future)
                ok, bad, error = future.result()
                accepted[name] += ok
                rejected[name] += bad
                if error and len(errors) < 5:
                    errors.append(f"{name}: {error}")
                progress.advance(task, n)
                submit_next()
    return accepted, rejected, errors


def wait_until_processed(
    client: httpx.Client, timeout: float = PROCESSING_TIMEOUT_SECONDS, stall: float = STALL_SECONDS
) -> bool:
    """Poll `/ready` until nothing waits to be written or processed.

    Gives up (False) after `timeout`, or when the lag has not gone down for `stall`
    seconds: a processing stage that keeps failing must not hang the demo.
    """
    start = time.monotonic()
    best: int | None = None
    best_at = start
    while time.monotonic() - start < timeout:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            body: dict[str, Any] = client.get("/ready").json()
            lag = body.get("processing_lag")
            if lag == 0 and body.get("pending_writes") == 0:
                return True
            if isinstance(lag, int) and (best is None or lag < best):
                best, best_at = lag, time.monotonic()
        if time.monotonic() - best_at > stall:
            return False
        time.sleep(0.2)
    return False


# --------------------------------------------------------------------------- the summary


def _print_summary(
    console: Console,
    world: DemoWorld,
    sources: dict[str, SourceInfo],
    summary: DemoSummary,
    accepted: Counter[str],
    rejected: Counter[str],
    before: dict[str, int],
    after: dict[str, int],
) -> None:
    table = Table("source", "channel", "trusted", "events", "accepted", "rejected", "newly stored", title="demo load")
    for spec in world.sources:
        info = sources[spec.name]
        table.add_row(
            spec.name,
            info.channel,
            "yes" if info.trusted else "no",
            str(len(world.messages.get(spec.name, ()))),
            str(accepted[spec.name]),
            str(rejected[spec.name]),
            str(after[spec.name] - before[spec.name]),
        )
    table.add_row(
        "total",
        "",
        "",
        str(summary.sent),
        str(summary.accepted),
        str(summary.rejected),
        str(summary.new_events),
        style="bold",
    )
    console.print(table)
    if summary.new_events == 0 and summary.sent:
        console.print("nothing new stored: this world was loaded before (message ids are deterministic)")
    for line in summary.sample_errors:
        console.print(f"[red]rejected[/red] {line}")
    personas = Counter(c.persona for c in world.customers)
    console.print(
        f"{summary.customers} customers: " + ", ".join(f"{n} {p.replace('_', ' ')}" for p, n in personas.most_common())
    )
    hero = world.hero
    if hero is not None:
        console.print(
            f"follow the brief's golden path: [bold]{hero.name}[/bold] <{hero.email}>, phone {hero.phone}, "
            f"loyalty card {hero.loyalty_card}, user id {hero.user_id}"
        )
    console.print(f"omnijourney on [bold]{summary.url}[/bold] (API docs at {summary.url}/docs)")
    console.print(
        f"staff console: [bold]{summary.url}/console/[/bold] (users and passwords in {summary.credentials_path})"
    )
    console.print(f"journey dashboard: [bold]{summary.url}/console/dashboard[/bold] (log in as marketer)")
    console.print(f"tokens and write keys: {summary.credentials_path}")
    console.print(f"loaded in {summary.seconds} s")


def _print_tasks(console: Console, by_store: dict[str, list[dict[str, Any]]]) -> None:
    if not by_store:
        return
    counts = ", ".join(f"{code} {len(tasks)}" for code, tasks in by_store.items())
    example = next(iter(by_store.values()))[0]
    console.print(f"store tasks from journeys, open on the console's store page: {counts}")
    console.print(f"  e.g. {example['location']}: {example['title']}")


def _print_service(console: Console, engine: sa.Engine, url: str) -> None:
    """What the service domain made of the chats and calls (docs/SERVICE.md)."""
    with db.read(engine) as conn:
        o = service_domain.overview(conn=conn)
    if not o["conversations"]:
        return
    channels = ", ".join(f"{n} {ch}" for ch, n in sorted(o["by_channel"].items()))
    console.print(
        f"service: {o['conversations']} conversations ({channels}); {o['repeat_contacts']} repeat contacts, "
        f"{o['lost_context']} of them through another channel (lost context)"
    )
    if o["lost_context_example"] is not None:
        console.print(f"  e.g. {url}/api/service/conversations/{o['lost_context_example']} (agent token)")

"""The `omnijourney` command line."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from omnijourney.config import Settings
from omnijourney.store import db, migrate

app = typer.Typer(no_args_is_help=True, help="omnijourney: one customer, one story, across every channel.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
sources_app = typer.Typer(no_args_is_help=True, help="Event sources and their write keys.")
tokens_app = typer.Typer(no_args_is_help=True, help="API tokens for people and integrations.")
app.add_typer(db_app, name="db")
app.add_typer(sources_app, name="sources")
app.add_typer(tokens_app, name="tokens")
users_app = typer.Typer(no_args_is_help=True, help="Staff console users (log in at /console).")
app.add_typer(users_app, name="users")
identity_app = typer.Typer(no_args_is_help=True, help="Identity resolution.")
app.add_typer(identity_app, name="identity")
segments_app = typer.Typer(no_args_is_help=True, help="Segments (engage).")
app.add_typer(segments_app, name="segments")
recommend_app = typer.Typer(no_args_is_help=True, help="Recommendations (engage).")
app.add_typer(recommend_app, name="recommend")
journeys_app = typer.Typer(no_args_is_help=True, help="Journey automations (engage).")
app.add_typer(journeys_app, name="journeys")
analytics_app = typer.Typer(no_args_is_help=True, help="The event lake and journey analytics.")
app.add_typer(analytics_app, name="analytics")

console = Console()
err = Console(stderr=True)

DatabaseOpt = typer.Option(None, "--database-url", help="overrides OMNIJOURNEY_DATABASE_URL")
DataDirOpt = typer.Option(None, "--data-dir", help="overrides OMNIJOURNEY_DATA_DIR")


def _settings(database_url: str | None = None, data_dir: Path | None = None, **kw: object) -> Settings:
    return Settings.from_env(database_url=database_url, data_dir=data_dir, **kw)


def _engine(settings: Settings):  # type: ignore[no-untyped-def]
    engine = db.create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    migrate.upgrade(engine)
    return engine


@db_app.command("upgrade")
def db_upgrade(database_url: str | None = DatabaseOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Apply all pending migrations."""
    settings = _settings(database_url, data_dir)
    engine = db.create_engine(settings.database_url)
    migrate.upgrade(engine)
    console.print(f"database at revision [bold]{migrate.current_revision(engine)}[/bold]")


@sources_app.command("create")
def sources_create(
    name: str,
    channel: str = typer.Option(..., "--channel", help="web, app, store, chat, call_center, email, ..."),
    trusted: bool = typer.Option(False, "--trusted", help="a server-side source whose events may merge profiles"),
    origin: list[str] = typer.Option(None, "--origin", help="allowed browser origin (repeatable); default any"),
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Create a source and print its write key."""
    from omnijourney.access import service
    from omnijourney.access.service import AccessError

    engine = _engine(_settings(database_url, data_dir))
    try:
        with db.write(engine) as conn:
            info = service.create_source(
                conn=conn, name=name, channel=channel, trusted=trusted, allowed_origins=origin or None
            )
    except AccessError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    print(info.write_key)


@sources_app.command("list")
def sources_list(database_url: str | None = DatabaseOpt, data_dir: Path | None = DataDirOpt) -> None:
    """List sources."""
    from rich.table import Table

    from omnijourney.access import service

    engine = _engine(_settings(database_url, data_dir))
    with db.read(engine) as conn:
        rows = service.list_sources(conn=conn)
    table = Table("id", "name", "channel", "trusted", "enabled", "write key")
    for s in rows:
        table.add_row(str(s.id), s.name, s.channel, str(s.trusted), str(s.enabled), s.write_key)
    console.print(table)


@tokens_app.command("create")
def tokens_create(
    role: str = typer.Option(..., "--role", help="admin, marketer, agent or store_staff"),
    name: str = typer.Option("", "--name"),
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Create an API token and print it (it is shown only once)."""
    from omnijourney.access import service
    from omnijourney.access.service import AccessError

    engine = _engine(_settings(database_url, data_dir))
    try:
        with db.write(engine) as conn:
            token = service.create_token(conn=conn, role=role, name=name)
    except AccessError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    print(token)


@users_app.command("create")
def users_create(
    username: str = typer.Argument(..., help="the login name (stored lower-case)"),
    role: str = typer.Option(..., "--role", help="admin, marketer, agent or store_staff"),
    home_store: str | None = typer.Option(None, "--home-store", help="store staff: their store's location code"),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="read the password from standard input instead of prompting"
    ),
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Create a console user. The password is prompted for (or read from stdin); it is never printed or logged."""

    from omnijourney.store.base import utcnow
    from omnijourney.web import service
    from omnijourney.web.service import ConsoleError

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    engine = _engine(_settings(database_url, data_dir))
    try:
        with db.write(engine) as conn:
            user = service.create_user(
                conn=conn, username=username, role=role, password=password, home_location=home_store, now=utcnow()
            )
    except ConsoleError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from exc
    finally:
        engine.dispose()
    print(f"created console user {user.username} ({user.role})")


@app.command("import")
def import_file(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="a .csv, .jsonl/.ndjson or .parquet file"),
    source: str = typer.Option(..., "--source", help="name of the source the rows come from"),
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
) -> None:
    """Bulk-import events through the same validation and storage path as the API."""
    from omnijourney.access import service as access_service
    from omnijourney.ingest import importer

    settings = _settings(database_url, data_dir)
    engine = _engine(settings)
    with db.read(engine) as conn:
        info = access_service.source_by_name(conn=conn, name=source)
    if info is None:
        err.print(f"[red]error:[/red] no source named {source!r}; create it with `omnijourney sources create`")
        raise typer.Exit(2)
    try:
        summary = importer.import_path(engine=engine, path=file, source=info, limits=settings.limits, console=console)
    except importer.ImportFileError as exc:
        err.print(f"[red]error:[/red] {exc}; nothing was imported")
        raise typer.Exit(2) from None
    console.print(
        f"[green]{summary.accepted}[/green] accepted, [red]{summary.rejected}[/red] rejected "
        f"(rejected rows are in the dead-letter table)"
    )
    for line in summary.sample_errors:
        console.print(f"  row {line}")
    if summary.accepted == 0 and summary.rejected > 0:
        raise typer.Exit(1)


@app.command("worker")
def worker(
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
    until_idle: bool = typer.Option(False, "--until-idle", help="exit once the log is fully processed"),
    poll_interval: float = typer.Option(
        0.05, "--poll-interval", min=0.001, help="seconds between checks for new events while idle"
    ),
    parent_pid: int | None = typer.Option(None, "--parent-pid", hidden=True, help="exit when this process exits"),
) -> None:
    """Run the processing stage on its own (`serve` starts one; run more to scale out, or with `serve --no-pipeline`)."""
    from omnijourney.pipeline import service as pipeline_service
    from omnijourney.pipeline.worker import run_until_idle, run_worker

    settings = _settings(database_url, data_dir)
    engine = _engine(settings)
    handlers = pipeline_service.default_handlers()
    if until_idle:
        n = run_until_idle(engine, handlers)
        console.print(f"processed {n} events")
        return
    run_worker(
        engine,
        handlers,
        poll_interval=poll_interval,
        max_lag=settings.limits.max_processing_lag,
        parent_pid=parent_pid,
    )
    # Every step has committed or rolled back and every connection is closed: skip the interpreter's
    # teardown, which at the worker's lowered CPU priority on a busy machine can take tens of seconds.
    engine.dispose()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


@app.command("serve")
def serve(
    host: str | None = typer.Option(None, "--host", help="overrides OMNIJOURNEY_HOST (default 127.0.0.1)"),
    port: int | None = typer.Option(None, "--port", help="overrides OMNIJOURNEY_PORT (default 8000)"),
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
    pipeline: bool = typer.Option(
        True, "--pipeline/--no-pipeline", help="run the processing stage (in a child process, stopped with the server)"
    ),
    pipeline_thread: bool = typer.Option(
        False, "--pipeline-thread", help="run the processing stage as a thread of the API process instead"
    ),
    workers: int = typer.Option(
        int(os.environ.get("OMNIJOURNEY_WORKERS", "1")),
        "--workers",
        min=1,
        max=64,
        help="API processes sharing the port (env OMNIJOURNEY_WORKERS; default 1)",
    ),
) -> None:
    """Start the API server (migrations are applied on start-up)."""
    import signal

    import uvicorn

    from omnijourney.app import create_app, tune_server_process
    from omnijourney.pipeline.worker import PipelineProcess

    if workers > 1 and pipeline_thread:
        raise typer.BadParameter("--pipeline-thread runs inside one API process; it cannot be used with --workers")
    settings = _settings(database_url, data_dir, host=host, port=port, run_pipeline=pipeline and pipeline_thread)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    child = None
    if (pipeline and not pipeline_thread) or workers > 1:
        # migrate before the child and the workers start, so no two processes ever migrate at once
        _engine(settings).dispose()
    if pipeline and not pipeline_thread:
        child = PipelineProcess(database_url=settings.database_url, data_dir=settings.data_dir)
        child.start()
        # uvicorn shuts down on SIGTERM, then raises it again with the handler found at start:
        # this one, which stops the child before the signal's default action ends the process
        previous = signal.getsignal(signal.SIGTERM)

        def stop_child_on_sigterm(signum: int, frame: object) -> None:
            child.stop()
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
            signal.raise_signal(signum)

        signal.signal(signal.SIGTERM, stop_child_on_sigterm)
    console.print(f"omnijourney on [bold]http://{settings.host}:{settings.port}[/bold]")
    try:
        if workers > 1:
            # each worker builds its app from the environment: hand the effective settings down
            os.environ.update(
                OMNIJOURNEY_DATABASE_URL=settings.database_url,
                OMNIJOURNEY_DATA_DIR=str(settings.data_dir),
                OMNIJOURNEY_RUN_PIPELINE="0",
                OMNIJOURNEY_SQLITE_SYNCHRONOUS=settings.sqlite_synchronous,
            )
            uvicorn.run(
                "omnijourney.app:worker_app",
                factory=True,
                workers=workers,
                host=settings.host,
                port=settings.port,
                log_level="warning",
            )
        else:
            api = create_app(settings)
            tune_server_process()
            uvicorn.run(api, host=settings.host, port=settings.port, log_level="warning")
    finally:
        if child is not None:
            child.stop()


@app.command("demo")
def demo(
    host: str | None = typer.Option(None, "--host"),
    port: int | None = typer.Option(None, "--port"),
    data_dir: Path | None = DataDirOpt,
    customers: int = typer.Option(2000, "--customers", help="how many customers the demo world has"),
    seed: int = typer.Option(42, "--seed", help="the world is the same for the same seed"),
    serve_after: bool = typer.Option(True, "--serve/--no-serve", help="keep serving after loading"),
) -> None:
    """Create the demo retailer, send its customers' journeys through the ingestion API, and serve it."""
    from omnijourney.demo import runner

    settings = _settings(None, data_dir, host=host, port=port)
    runner.run_demo(settings=settings, customers=customers, seed=seed, serve_after=serve_after, console=console)


@identity_app.command("rebuild")
def identity_rebuild(
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
    batch: int = typer.Option(5000, "--batch", help="events per transaction"),
) -> None:
    """Recompute the identity graph and profiles from every stored event (recorded unmerges replayed).

    Stop the processing workers first, or run it while they are idle: both take the same
    checkpoint lock, so they never interleave inside a step.
    """
    import sqlalchemy as sa
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from omnijourney.ingest.models import Event
    from omnijourney.pipeline import service as pipeline_service
    from omnijourney.pipeline.worker import fewer_collections

    engine = _engine(_settings(database_url, data_dir))
    handlers = pipeline_service.default_handlers()
    with db.read(engine) as conn:
        total = conn.execute(sa.select(sa.func.count()).select_from(Event.__table__)).scalar_one()
    with db.write(engine) as conn:
        pipeline_service.reset(conn=conn, handlers=handlers)
    done = 0
    with (
        fewer_collections(),
        Progress(
            TextColumn("[bold]rebuilding[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
    ):
        task = progress.add_task("events", total=total)
        while True:
            with db.write(engine) as conn:
                n = pipeline_service.process_step(conn=conn, handlers=handlers, limit=batch, rebuild=True)
            if n == 0:
                break
            done += n
            progress.update(task, completed=done)
    with db.read(engine) as conn:
        profiles = conn.execute(sa.text("SELECT count(DISTINCT canonical_id) FROM profiles")).scalar_one()
    console.print(f"rebuilt from {done} events: {profiles} profiles")


@segments_app.command("refresh")
def segments_refresh(
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
    every: float = typer.Option(0, "--every", help="repeat every N seconds (a periodic sweep); 0 runs once"),
) -> None:
    """Re-evaluate every profile's segments ('within a period' conditions change with the clock)."""
    import time

    from omnijourney.engage.config import default_config
    from omnijourney.engage.service import refresh_all

    engine = _engine(_settings(database_url, data_dir))
    while True:
        counts = refresh_all(engine=engine, config=default_config())
        console.print(f"segments refreshed: {counts['entered']} entered, {counts['left']} left")
        if every <= 0:
            return
        time.sleep(every)


@journeys_app.command("list")
def journeys_list(database_url: str | None = DatabaseOpt, data_dir: Path | None = DataDirOpt) -> None:
    """The journey definitions (validated; a bad file stops here) with their statistics."""
    from omnijourney.engage import schedule
    from omnijourney.engage.journeys import default_journeys
    from omnijourney.store.base import utcnow

    engine = _engine(_settings(database_url, data_dir))
    with db.write(engine) as conn:
        schedule.sync_journeys(conn=conn, journeys=default_journeys(), now=utcnow())
        stats = schedule.stats(conn)
    for j in default_journeys():
        st = stats.get(j.key, schedule.empty_stats())
        console.print(
            f"{j.key:28} {'on ' if j.enabled else 'off'} {j.trigger.kind:10} entered {st['entered']:5} "
            f"control {st['control']:4} sent {st['sent']:5} converted {st['converted']:4} uplift {st['uplift']}"
        )


@journeys_app.command("run-due")
def journeys_run_due(
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
    limit: int = typer.Option(500, "--limit", help="most steps per claim"),
    every: float = typer.Option(0, "--every", help="repeat every N seconds; 0 runs until nothing is due"),
) -> None:
    """Enter time-triggered profiles and run every due journey step (what the worker does periodically)."""
    import time

    from omnijourney.engage.delivery import DeliveryConfig
    from omnijourney.engage.schedule import Executor, RunStats
    from omnijourney.store.base import utcnow

    settings = _settings(database_url, data_dir)
    engine = _engine(settings)
    from omnijourney.engage.journeys import default_journeys

    executor = Executor(engine, DeliveryConfig.from_env(settings.data_dir), journeys=default_journeys())
    try:
        while True:
            total, scan = RunStats(), True
            while True:
                s = executor.run_due(now=utcnow(), limit=limit, scan=scan)
                scan = False
                total.add(s)
                if s.claimed < limit:
                    break
            console.print(
                f"journeys: {total.entered} entered, {total.claimed} steps run: {total.sent} sent, "
                f"{total.failed} failed, {total.skipped} suppressed, {total.deferred} deferred, {total.retried} to retry"
            )
            if every <= 0:
                return
            time.sleep(every)
    finally:
        executor.close()


@recommend_app.command("train")
def recommend_train(database_url: str | None = DatabaseOpt, data_dir: Path | None = DataDirOpt) -> None:
    """Rebuild the item-to-item model from every stored purchase and view."""
    from omnijourney.engage import recommend
    from omnijourney.engage.config import default_config
    from omnijourney.store.base import utcnow

    engine = _engine(_settings(database_url, data_dir))
    with db.write(engine) as conn:
        out = recommend.train(conn=conn, config=default_config().recommendations, now=utcnow())
    console.print(
        f"model {out['model_id']}: {out['items']} items, {out['profiles']} profiles, "
        f"{out['purchases']} purchase lines, {out['views']} views, {out['pairs']} neighbour pairs"
    )


@recommend_app.command("evaluate")
def recommend_evaluate(
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
    k: int = typer.Option(10, "--k", help="cut-off of hit rate@k and NDCG@k"),
) -> None:
    """Offline evaluation: each customer's last order held out; hit rate and NDCG vs most popular and buy again."""
    from omnijourney.engage import recommend
    from omnijourney.engage.config import default_config

    engine = _engine(_settings(database_url, data_dir))
    with db.read(engine) as conn:
        out = recommend.evaluate_offline(conn=conn, config=default_config().recommendations, k=k)
    console.print(
        f"hold-out: last order of {out['customers']} customers "
        f"(trained on {out['train_purchases']} purchase lines, {out['train_views']} views)"
    )
    for name in recommend.BASELINES:
        console.print(f"{name:>13}: hit rate@{k} {out[name]['hit_rate']:.4f}  NDCG@{k} {out[name]['ndcg']:.4f}")


@analytics_app.command("export")
def analytics_export(
    database_url: str | None = DatabaseOpt,
    data_dir: Path | None = DataDirOpt,
    batch: int = typer.Option(50_000, "--batch", min=1, help="events per lake file batch"),
) -> None:
    """Export processed events not yet in the lake (exactly once) and refresh the dimension snapshots."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from omnijourney.analytics import lake

    settings = _settings(database_url, data_dir)
    engine = _engine(settings)
    with Progress(
        TextColumn("[bold]exporting[/bold]"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("events", total=None)

        def report(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            result = lake.export(engine=engine, data_dir=settings.data_dir, batch=batch, progress=report)
        except lake.ExportBusy as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    dims = ", ".join(f"{k} {v}" for k, v in result.dimensions.items())
    console.print(
        f"exported [green]{result.rows}[/green] events in {result.files} files up to log position "
        f"{result.position} into {lake.lake_dir(settings.data_dir)}; snapshots: {dims}"
    )
    if result.removed:
        console.print(f"removed {result.removed} leftover files of an interrupted export")
    if result.compacted and result.compacted.written:
        c = result.compacted
        console.print(f"compacted {c.merged} small files into {c.written}")


@analytics_app.command("compact")
def analytics_compact(
    data_dir: Path | None = DataDirOpt,
    max_rows: int = typer.Option(1_000_000, "--max-rows", min=1, help="rows per compacted file at most"),
    grace: float = typer.Option(
        600.0, "--grace", min=0.0, help="seconds a superseded file is kept for queries that already listed it"
    ),
) -> None:
    """Merge each day's small lake files into few large ones; queries read the same rows, faster."""
    from omnijourney.analytics import lake

    settings = _settings(None, data_dir)
    try:
        c = lake.compact(data_dir=settings.data_dir, max_rows=max_rows, grace_seconds=grace)
    except lake.ExportBusy as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    console.print(
        f"compacted {c.merged} files into {c.written}; deleted {c.pruned} superseded files "
        f"in {lake.lake_dir(settings.data_dir)}"
    )


if __name__ == "__main__":
    app()

"""The app factory: wires the domain packages together, owns nothing itself."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from omnijourney import __version__, errors
from omnijourney.access import views as access_views
from omnijourney.access.cache import SourceCache, TokenCache
from omnijourney.analytics import views as analytics_views
from omnijourney.commerce import views as commerce_views
from omnijourney.commerce.sweeper import ReservationSweeper
from omnijourney.config import Settings
from omnijourney.engage import journey_views
from omnijourney.engage import views as engage_views
from omnijourney.engage.delivery import DeliveryConfig
from omnijourney.engage.schedule import JourneyRunner
from omnijourney.identity import views as identity_views
from omnijourney.identity.rules import load_rules
from omnijourney.ingest import api as ingest_api
from omnijourney.ingest import views as ingest_views
from omnijourney.ingest.cors import TrackingCors
from omnijourney.ingest.writer import EventWriter
from omnijourney.pipeline import service as pipeline_service
from omnijourney.pipeline import views as pipeline_views
from omnijourney.pipeline.monitor import LagMonitor
from omnijourney.pipeline.worker import PipelineWorker
from omnijourney.profiles import views as profile_views
from omnijourney.profiles.config import load_profile_config
from omnijourney.routing import skip_foreign_routers
from omnijourney.service import views as service_views
from omnijourney.service.config import load_service_config
from omnijourney.store import db, migrate
from omnijourney.web import views as web_views

log = logging.getLogger(__name__)


class Runtime:
    """The long-lived parts of one API process, started and stopped with it."""

    def __init__(self, settings: Settings, engine: sa.Engine) -> None:
        self.settings = settings
        self.engine = engine
        self.sources = SourceCache(engine)
        self.tokens = TokenCache(engine)
        #: SMTP, links and policies of journey messages (the public /e/ routes verify with its secret)
        self.delivery = DeliveryConfig.from_env(settings.data_dir)
        self.worker = (
            PipelineWorker(
                engine, pipeline_service.default_handlers(), companions=[JourneyRunner(engine, self.delivery)]
            )
            if settings.run_pipeline
            else None
        )
        self.writer = EventWriter(
            engine,
            max_pending_events=settings.limits.max_pending_events,
            on_commit=self.worker.wake if self.worker else None,
        )
        self.lag_monitor = LagMonitor(engine)
        self.sweeper = ReservationSweeper(engine)

    def start(self) -> None:
        self.writer.start()
        if self.worker:
            self.worker.start()
        self.lag_monitor.refresh()
        self.lag_monitor.start()
        self.sweeper.start()

    def stop(self) -> None:
        self.writer.stop()  # drains queued writes first
        if self.worker:
            self.worker.stop()
        self.lag_monitor.stop()
        self.sweeper.stop()


def create_app(
    settings: Settings | None = None, *, engine: sa.Engine | None = None, migrate_db: bool = True
) -> FastAPI:
    settings = settings or Settings.from_env()
    engine = engine or db.create_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    runtime = Runtime(settings, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if migrate_db:
            await run_in_threadpool(migrate.upgrade, engine)
        runtime.start()
        try:
            yield
        finally:
            await run_in_threadpool(runtime.stop)

    app = FastAPI(
        title="omnijourney",
        version=__version__,
        description="One customer, one story, across every channel.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.runtime = runtime
    app.state.sources = runtime.sources
    app.state.tokens = runtime.tokens
    app.state.writer = runtime.writer
    app.state.lag_monitor = runtime.lag_monitor
    app.state.delivery_config = runtime.delivery
    # loaded (and validated) at start-up: a broken rules file stops the server, not a request
    app.state.identity_rules = load_rules()
    app.state.profile_config = load_profile_config()
    app.state.service_config = load_service_config()
    errors.install(app)

    @app.get("/health", tags=["health"])
    async def health() -> Response:
        """Liveness: the process answers."""
        return Response(orjson.dumps({"status": "ok", "version": __version__}), media_type="application/json")

    @app.get("/ready", tags=["health"])
    async def ready(request: Request) -> Response:
        """Readiness: the database answers and the processing stage is within its lag bound."""

        def probe() -> dict[str, Any]:
            with db.read(engine) as conn:
                conn.execute(sa.text("SELECT 1"))
                return {"lag": pipeline_service.lag(conn=conn)}

        try:
            info = await run_in_threadpool(probe)
        except Exception as exc:
            log.warning("readiness probe failed: %s", exc)
            body = {"status": "unavailable", "database": "unreachable"}
            return Response(orjson.dumps(body), status_code=503, media_type="application/json")
        lagging = info["lag"] > settings.limits.max_processing_lag
        body = {
            "status": "lagging" if lagging else "ready",
            "database": "ok",
            "processing_lag": info["lag"],
            "pending_writes": runtime.writer.pending,
        }
        return Response(orjson.dumps(body), status_code=503 if lagging else 200, media_type="application/json")

    # FastAPI tries the routes in order, so the routers come in the order of their traffic (tracking,
    # the reads every channel makes, service, the console, tracked links; admin, pipeline and
    # analytics last), and `skip_foreign_routers` lets a router whose prefixes cannot match skip all
    # its routes at once (routing.py). No two routers share a path: the order changes nothing else.
    app.include_router(ingest_views.router)
    app.include_router(profile_views.router)
    app.include_router(service_views.profile_router)
    app.include_router(engage_views.router)
    app.include_router(commerce_views.router)
    app.include_router(service_views.router)
    app.include_router(identity_views.router)
    web_views.install(app)
    app.include_router(journey_views.public)
    app.include_router(ingest_api.router)
    app.include_router(access_views.router)
    app.include_router(pipeline_views.router)
    app.include_router(journey_views.router)
    app.include_router(analytics_views.router)
    skip_foreign_routers(app)
    app.add_middleware(TrackingCors, origin_allowed=runtime.sources.origin_allowed)
    return app


def tune_server_process() -> None:
    """Settings for a long-running API process (see benchmarks/README.md for the measurements)."""
    import gc
    import sys

    # Everything built so far lives as long as the process: keep it out of the cyclic GC's
    # full collections, which otherwise rescan it (~100 ms each) while requests wait.
    gc.collect()
    gc.freeze()
    # The group-commit writer releases the GIL around every SQLite call and must win it back
    # from the event loop; the default 5 ms switch interval made each of those calls cost up
    # to 5 ms. 0.5 ms lets the writer back in quickly.
    sys.setswitchinterval(0.0005)


def worker_app() -> FastAPI:
    """App factory for each process of `omnijourney serve --workers N` (settings from the environment).

    The parent applies migrations before starting the workers, so workers never migrate at once.
    """
    app = create_app(Settings.from_env(), migrate_db=False)
    tune_server_process()
    return app

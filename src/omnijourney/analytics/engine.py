"""Open the lake as Ibis tables on DuckDB (the embedded default) or Apache Spark.

Only table registration differs between engines; every analysis is one Ibis expression
over the tables returned here and runs unchanged on both.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ibis
import pyarrow as pa
import pyarrow.parquet as pq

from omnijourney.analytics import lake as lake_mod

ENGINES = ("duckdb", "spark")
#: the dimension snapshots an analysis may use (an absent file reads as an empty table)
DIMENSION_NAMES = ("identity_map", "orders", "locations", "products", "segment_members", "conversations")

_spark_lock = threading.Lock()
_spark_session: list[Any] = []


#: extra JVM flags for the driver Spark starts; e.g. "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC" halves the
#: start-up and the per-query time of small interactive queries (the tests set it), at the cost of peak speed
#: on long jobs, so production leaves it empty unless it runs small lakes
SPARK_JAVA_OPTIONS_ENV = "OMNIJOURNEY_SPARK_JAVA_OPTIONS"


def spark_session(master: str = "local[1]") -> Any:
    """One SparkSession per process (creating one takes seconds), UTC, few shuffle partitions."""
    with _spark_lock:
        if not _spark_session:
            from pyspark.sql import SparkSession

            builder = SparkSession.builder
            java_options = os.environ.get(SPARK_JAVA_OPTIONS_ENV, "").strip()
            if java_options:
                builder = builder.config("spark.driver.extraJavaOptions", java_options)
            session = (
                builder.master(master)
                .appName("omnijourney-analytics")
                .config("spark.sql.shuffle.partitions", "1")
                .config("spark.sql.codegen.wholeStage", "false")
                .config("spark.sql.adaptive.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.default.parallelism", "1")
                .config("spark.sql.session.timeZone", "UTC")
                .config("spark.ui.enabled", "false")
                .config("spark.sql.ansi.enabled", "false")
                .config("spark.driver.memory", "1g")
                .getOrCreate()
            )
            session.sparkContext.setLogLevel("ERROR")
            _spark_session.append(session)
        return _spark_session[0]


@dataclass
class LakeTables:
    """The lake as Ibis tables. `events` carries `unit`: the cluster (canonical profile) at query time."""

    backend: Any
    engine: str
    events: ibis.Table
    identity_map: ibis.Table
    orders: ibis.Table
    locations: ibis.Table
    products: ibis.Table
    #: segment memberships (`segment_key`, `segment_name`, `profile_id`, `entered_at`) and service
    #: conversations; optional so that older callers building LakeTables by hand keep working
    segment_members: ibis.Table | None = None
    conversations: ibis.Table | None = None

    views: list[str] = field(default_factory=list)
    #: temp tables `materialise` created on this connection (DuckDB)
    materialised: set[str] = field(default_factory=set)

    def execute(self, expr: ibis.Expr) -> pa.Table:
        return self.backend.to_pyarrow(expr)

    def close(self) -> None:
        """Drop the Spark temp views of this call (DuckDB connections go with the object)."""
        if self.engine == "spark":
            session = self.backend._session
            for view in self.views:
                session.catalog.dropTempView(view)
        else:
            self.backend.disconnect()


#: compiled SQL of materialised intermediate tables, by key (process-wide, bounded)
_SQL_MAX = 512
_sql_lock = threading.Lock()
_sql: OrderedDict[str, str] = OrderedDict()


def materialise(lt: LakeTables, key: tuple[Any, ...], build: Callable[[], ibis.Table]) -> ibis.Table:
    """The table `build()` describes; on DuckDB created once as a temp table, its SQL compiled once per key.

    Building an Ibis expression and compiling it to SQL is pure Python and costs a large part of a
    small query, so the SQL is kept per `key`, which must spell everything the expression depends
    on (the analysis spec, the filters, "now", and the keys of the tables it reads). Lake tables
    have fixed names on every connection (`lake_events`, `identity_map`, ...) and a materialised
    table is named after its key, so the SQL compiled for one connection is valid on the next.
    Spark gets the expression itself (it plans the reuse; a cached view would outlive the call).
    """
    if lt.engine != "duckdb":
        return build()
    text = repr(key)
    name = "oj_" + hashlib.sha1(text.encode()).hexdigest()[:20]
    if name not in lt.materialised:
        with _sql_lock:
            sql = _sql.get(text)
            if sql is not None:
                _sql.move_to_end(text)
        if sql is None:
            sql = str(lt.backend.compile(build()))
            with _sql_lock:
                _sql[text] = sql
                while len(_sql) > _SQL_MAX:
                    _sql.popitem(last=False)
        lt.backend.raw_sql(f'CREATE TEMP TABLE "{name}" AS {sql}')
        lt.materialised.add(name)
    return lt.backend.table(name)


def _empty(schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([], schema=schema)


def _dimension_schema(name: str) -> pa.Schema:
    from omnijourney.analytics.lake import TS

    schemas = {
        "identity_map": pa.schema(
            [("profile_id", pa.int64()), ("canonical_id", pa.int64()), ("merged_into", pa.int64()), ("created_at", TS)]
        ),
        "orders": pa.schema(
            [
                ("id", pa.int64()),
                ("order_ref", pa.string()),
                ("channel", pa.string()),
                ("store_id", pa.string()),
                ("fulfilment", pa.string()),
                ("pickup_location", pa.string()),
                ("status", pa.string()),
                ("currency", pa.string()),
                ("profile_id", pa.int64()),
                ("total_minor", pa.int64()),
                ("refunded_minor", pa.int64()),
                ("placed_at", TS),
                ("placed_ms", pa.int64()),
            ]
        ),
        "locations": pa.schema(
            [
                ("code", pa.string()),
                ("name", pa.string()),
                ("kind", pa.string()),
                ("city", pa.string()),
                ("country", pa.string()),
                ("latitude", pa.float64()),
                ("longitude", pa.float64()),
                ("pickup", pa.bool_()),
            ]
        ),
        "products": pa.schema(
            [
                ("sku", pa.string()),
                ("product_id", pa.string()),
                ("name", pa.string()),
                ("category", pa.string()),
                ("brand", pa.string()),
                ("active", pa.bool_()),
            ]
        ),
        "segment_members": pa.schema(
            [
                ("segment_key", pa.string()),
                ("segment_name", pa.string()),
                ("profile_id", pa.int64()),
                ("entered_at", TS),
            ]
        ),
        "conversations": pa.schema(
            [
                ("id", pa.int64()),
                ("channel", pa.string()),
                ("profile_id", pa.int64()),
                ("status", pa.string()),
                ("topic", pa.string()),
                ("started_at", TS),
                ("started_ms", pa.int64()),
                ("first_response_ms", pa.int64()),
                ("resolved_ms", pa.int64()),
                ("contact_number", pa.int64()),
                ("previous_conversation_id", pa.int64()),
                ("lost_context", pa.bool_()),
                ("csat", pa.int64()),
                ("nps", pa.int64()),
            ]
        ),
    }
    return schemas[name]


def open_lake(data_dir: Path, engine: str = "duckdb", *, spark: Any = None) -> LakeTables:
    """Register the committed event files and the dimension snapshots on an engine."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}")
    lake = lake_mod.lake_dir(data_dir)
    files = [str(f) for f in lake_mod.event_files(lake)]
    dims = {}
    for name in DIMENSION_NAMES:
        path = lake / "dimensions" / f"{name}.parquet"
        dims[name] = str(path) if path.exists() else None

    if engine == "duckdb":
        backend = ibis.duckdb.connect()

        def register(name: str, paths: list[str] | None, schema: pa.Schema) -> ibis.Table:
            if paths:
                return backend.read_parquet(paths, table_name=name)
            return backend.create_table(name, _empty(schema))

    else:
        session = spark or spark_session()
        backend = ibis.pyspark.connect(session)
        # views are per call: concurrent requests on the shared session never see each other's file lists
        suffix = uuid.uuid4().hex[:12]

        def register(name: str, paths: list[str] | None, schema: pa.Schema) -> ibis.Table:
            view = f"oj_{name}_{suffix}"
            views.append(view)
            if paths:
                df = session.read.parquet(*paths)
            else:
                from pyspark.sql.pandas.types import from_arrow_schema

                df = session.createDataFrame([], from_arrow_schema(schema))
            df.createOrReplaceTempView(view)
            return backend.table(view)

    views: list[str] = []
    raw = register("lake_events", files, lake_mod.EVENT_SCHEMA)
    tables = {name: register(name, [p] if p else None, _dimension_schema(name)) for name, p in dims.items()}
    idm = tables["identity_map"].select(map_profile=lambda t: t.profile_id, map_canonical=lambda t: t.canonical_id)
    joined = raw.left_join(idm, raw.profile_id == idm.map_profile)
    events = joined.mutate(unit=joined.map_canonical.coalesce(joined.profile_id)).drop("map_profile", "map_canonical")
    return LakeTables(
        backend=backend,
        engine=engine,
        events=events,
        identity_map=tables["identity_map"],
        orders=tables["orders"],
        locations=tables["locations"],
        products=tables["products"],
        segment_members=tables["segment_members"],
        conversations=tables["conversations"],
        views=views,
    )


def read_events(data_dir: Path) -> pa.Table:
    """Every committed lake row (for tests and small tools)."""
    files = lake_mod.event_files(lake_mod.lake_dir(data_dir))
    if not files:
        return _empty(lake_mod.EVENT_SCHEMA)
    return pa.concat_tables([pq.read_table(f, schema=lake_mod.EVENT_SCHEMA) for f in files])

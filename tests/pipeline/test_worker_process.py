"""The processing stage as a child process of `omnijourney serve`, and its pacing on SQLite."""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from omnijourney.access import service as access
from omnijourney.ingest import service as ingest
from omnijourney.pipeline import service as pipeline
from omnijourney.pipeline.worker import IngestFirst, PipelineProcess, PipelineWorker
from omnijourney.store import db
from omnijourney.store.base import Encoded
from tests.conftest import wait_for
from tests.pipeline.test_crash_safety import processed_total, seed_events


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def test_pipeline_process_processes_and_stops_with_the_server(engine: sa.Engine, database_url: str, tmp_path) -> None:
    n = 3000
    seed_events(engine, n)
    child = PipelineProcess(database_url=database_url, data_dir=tmp_path)
    child.start()
    try:
        assert wait_for(lambda: processed_total(engine) == n, timeout=60)
        pid = child.pid
        assert pid is not None and _alive(pid)
    finally:
        child.stop()
    assert not _alive(pid)
    assert processed_total(engine) == n


def test_pipeline_process_exits_when_the_server_dies(engine: sa.Engine, database_url: str, tmp_path) -> None:
    seed_events(engine, 10)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from omnijourney.pipeline.worker import PipelineProcess\n"
        "p = PipelineProcess(database_url=sys.argv[1], data_dir=Path(sys.argv[2]))\n"
        "p.start()\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    server = subprocess.Popen(
        [sys.executable, "-c", script, database_url, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        worker_pid = int(server.stdout.readline())  # type: ignore[union-attr]
        assert wait_for(lambda: processed_total(engine) == 10, timeout=60)
        server.send_signal(signal.SIGKILL)  # no chance to stop its child
        server.wait(timeout=10)
        assert wait_for(lambda: not _alive(worker_pid), timeout=15), "the orphaned worker kept running"
    finally:
        if server.poll() is None:
            server.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_the_processing_stage_in_a_child_process(engine: sa.Engine, database_url: str, tmp_path) -> None:
    with db.write(engine) as conn:
        key = access.create_source(conn=conn, name="web", channel="web").write_key
    port = _free_port()
    env = {**os.environ, "OMNIJOURNEY_DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "omnijourney.cli", "serve", "--port", str(port), "--database-url", database_url]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(healthy, timeout=60), "server did not start"
        workers = [p for p in _children(server.pid) if b"worker" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(workers) == 1, "serve should run exactly one processing child"
        auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
        batch = {"batch": [{"type": "track", "event": "E", "userId": "u", "messageId": f"s{i}"} for i in range(200)]}
        assert httpx.post(url + "/v1/batch", json=batch, headers=auth, timeout=30).status_code == 200
        # the child has no in-process wake-up: it finds the events by polling
        assert wait_for(lambda: processed_total(engine) == 200, timeout=30)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        assert wait_for(lambda: not _alive(workers[0]), timeout=10), "the processing child outlived the server"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(timeout=10)
    # uvicorn ends a SIGTERM'd server with the signal's default action, after a clean shutdown
    log = server.stderr.read().decode()  # type: ignore[union-attr]
    assert server.returncode in (0, -signal.SIGTERM), log[-2000:]
    assert "is gone" not in log, "the child was not stopped by the server"


def test_ingest_first_yields_only_in_bursts_and_less_as_the_lag_nears_its_bound() -> None:
    policy = IngestFirst(min_share=0.25, max_lag=10_000, catch_up_seconds=1.0, full_share_seconds=100.0)
    # keeping up (the backlog clears within a second): full speed, for freshness
    assert policy.share(0, 0.001) == 1.0
    assert policy.share(1000, 0.001) == 1.0
    # a burst: ingestion first, less so as the lag approaches the bound
    assert policy.share(2000, 0.001) == pytest.approx(0.25 + 0.75 * 0.2)
    assert policy.share(5000, 0.001) == pytest.approx(0.625)
    assert policy.share(10_000, 0.001) == 1.0
    assert policy.share(10**9, 0.001) == 1.0
    # far from the event bound, a backlog worth many seconds of processing still earns the lock
    # (a stage at 25 % of the lock below the arrival rate would fall behind for ever)
    steady = IngestFirst(min_share=0.25, max_lag=2_000_000, catch_up_seconds=1.0, full_share_seconds=10.0)
    assert steady.share(4_000, 0.0005) == pytest.approx(0.25 + 0.75 * 0.2)  # 2 s of backlog
    assert steady.share(20_000, 0.0005) == 1.0  # 10 s of backlog, 1 % of max_lag
    # never paced below the arrival rate: 2,000 events/s at 0.3 ms each needs 60 % of the lock
    assert steady.share(4_000, 0.0003, 2_000.0) == pytest.approx(1.25 * 0.6)
    assert steady.share(4_000, 0.0005, 2_000.0) == 1.0  # needs all of it (and a margin)
    assert steady.share(4_000, 0.0005, 100.0) == pytest.approx(0.25 + 0.75 * 0.2)  # a trickle: the paced share
    assert steady.share(1_000, 0.0005, 10**6) == 1.0  # keeping up: full speed anyway


def test_paced_worker_keeps_up_exactly_once_while_events_keep_arriving(engine: sa.Engine) -> None:
    src = seed_events(engine, 500)
    worker = PipelineWorker(
        engine,
        pipeline.default_handlers(),
        poll_interval=0.02,
        ingest_first=IngestFirst(step_seconds=0.01, catch_up_seconds=0.0, min_share=0.25, max_lag=10**6, min_batch=5),
    )
    stop = threading.Event()
    appended = [500]

    def ingest_more() -> None:
        base = datetime(2026, 11, 2, tzinfo=UTC)
        i = 0
        while not stop.is_set() and i < 40:
            rows = [
                {
                    "source_id": src,
                    "message_id": f"late{i}-{j}",
                    "type": "track",
                    "event": "Store Visited",
                    "user_id": f"u{j}",
                    "channel": "store",
                    "timestamp": base,
                    "received_at": base,
                    "context": {},
                    "payload": Encoded('{"type":"track"}'),
                }
                for j in range(25)
            ]
            with db.write(engine) as conn:
                ingest.append_events(conn=conn, rows=rows)
            appended[0] += 25
            i += 1
            time.sleep(0.01)

    feeder = threading.Thread(target=ingest_more)
    worker.start()
    feeder.start()
    try:
        feeder.join(timeout=120)
        assert wait_for(lambda: processed_total(engine) == appended[0], timeout=120)
    finally:
        stop.set()
        worker.stop()
    assert processed_total(engine) == appended[0] == 1500
    with db.read(engine) as conn:
        assert pipeline.lag(conn=conn) == 0


def test_serve_with_several_api_workers_stores_everything_once(engine: sa.Engine, database_url: str, tmp_path) -> None:
    """`serve --workers 2`: two API processes share the port and the database; concurrent batches and
    their retries land exactly once, the one processing child applies them, reads work, SIGTERM ends all."""
    with db.write(engine) as conn:
        key = access.create_source(conn=conn, name="web", channel="web").write_key
        token = access.create_token(conn=conn, role="agent")
    port = _free_port()
    env = {**os.environ, "OMNIJOURNEY_DATA_DIR": str(tmp_path)}
    cmd = [sys.executable, "-m", "omnijourney.cli", "serve", "--port", str(port), "--database-url", database_url]
    server = subprocess.Popen(
        [*cmd, "--workers", "2"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(healthy, timeout=120), "server did not start"
        assert wait_for(lambda: len(_children(server.pid)) >= 3, timeout=30), "expected 2 API workers + 1 pipeline"
        children = _children(server.pid)
        auth = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
        failures: list[str] = []

        def client(n: int) -> None:
            with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
                for b in range(3):
                    batch = [
                        {"type": "track", "event": "E", "userId": f"u{n}", "messageId": f"w{n}-{b}-{i}"}
                        for i in range(100)
                    ]
                    for _attempt in range(2):  # every batch is sent twice: a retry must not duplicate
                        r = c.post("/v1/batch", json={"batch": batch})
                        if r.status_code != 200:
                            failures.append(f"{r.status_code} {r.text[:200]}")

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert failures == []
        with db.read(engine) as conn:
            stored = conn.execute(sa.text("SELECT count(*), count(DISTINCT message_id) FROM events")).one()
        assert tuple(stored) == (1200, 1200)
        assert wait_for(lambda: processed_total(engine) == 1200, timeout=60)
        bearer = {"Authorization": f"Bearer {token}"}
        for _ in range(6):  # answered by whichever worker accepts the connection
            r = httpx.get(url + "/api/profiles/lookup", params={"type": "user_id", "value": "u3"}, headers=bearer)
            assert r.status_code == 200 and r.json()["computed"]["event_count"] == 300
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        assert wait_for(lambda: not any(_alive(p) for p in children), timeout=15), "a child outlived the server"
    finally:
        with contextlib.suppress(ProcessLookupError):  # the API workers too, not only their parent
            os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=10)

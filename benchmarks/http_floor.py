"""The CPU floor of one HTTP request on this machine, and what it implies for closed-loop targets.

Several read targets are stated as "p99 under X ms with N concurrent sessions" where the sessions
send their next request the moment the last one is answered (a closed loop). Then latency is set
by throughput (Little's law: mean latency = N / requests per second), and throughput by the CPU a
request costs the server *and* the client load generator, which share the machine's cores. This
script measures that cost for requests that do almost nothing, so the bound below which no
handler can go is a measured figure, not a guess:

* `bare`: a one-route FastAPI app returning a small JSON object, under the same uvicorn
  (httptools, uvloop) as `omnijourney serve`: the framework's own floor;
* `health`: omnijourney's `GET /health` (the whole middleware stack, no database);
* `lookup`: omnijourney's `GET /api/profiles/lookup` for an unknown e-mail with an agent token
  (the bearer-token check, the e-mail normalisation and one indexed read; answers 404).

Each case: one keep-alive connection (`_common.HttpClient`, what the read benchmarks use; the
bare route also with httpx, which they used before) sends `--requests` requests one at a time
after a warm-up. Server CPU is the server process's user + system time
from /proc; client CPU is this process's `time.process_time()`. Both are per request, and do
not depend on the machine's load much. From them it prints, for `--cores` cores and
`--sessions` closed-loop sessions: the most requests per second the cores could serve if they
did nothing else, and the mean latency that throughput forces on the sessions.

    .venv/bin/python benchmarks/http_floor.py
    .venv/bin/python benchmarks/http_floor.py --requests 5000 --sessions 50 --cores 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import HttpClient, Server, free_port, make_console, process_cpu_seconds

BARE_APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/")
async def hello() -> dict:
    return {"status": "ok"}
"""


@dataclass
class Floor:
    case: str
    server_ms: float
    client_ms: float
    status: int

    @property
    def total_ms(self) -> float:
        return self.server_ms + self.client_ms

    def max_rps(self, cores: int) -> float:
        return 1000.0 * cores / self.total_ms

    def closed_loop_ms(self, cores: int, sessions: int) -> float:
        """Mean latency of `sessions` closed-loop sessions at the cores' saturation (Little's law)."""
        return 1000.0 * sessions / self.max_rps(cores)


def measure(
    port: int, path: str, pid: int, requests: int, headers: dict[str, str] | None = None, *, client: str = "stdlib"
) -> tuple[float, float, int]:
    """(server CPU ms, client CPU ms, status) per GET `path`, one at a time on one keep-alive connection:
    `stdlib` is `_common.HttpClient` (what the read benchmarks use), `httpx` what they used before."""
    import httpx

    conn: Any = (
        HttpClient(port, headers)
        if client == "stdlib"
        else httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers or {}, timeout=30)
    )
    with conn:
        status = 0
        for _ in range(200):  # warm-up: imports, caches, the connection
            status = conn.get(path).status_code
        s0, c0 = process_cpu_seconds(pid), time.process_time()
        for _ in range(requests):
            conn.get(path)
        s1, c1 = process_cpu_seconds(pid), time.process_time()
    return 1000 * (s1 - s0) / requests, 1000 * (c1 - c0) / requests, status


def _wait(base: str, path: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(base + path, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


def bare_floor(workdir: Path, requests: int) -> list[Floor]:
    (workdir / "bare_app.py").write_text(BARE_APP)
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "bare_app:app", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        _wait(f"http://127.0.0.1:{port}", "/", proc)
        out = []
        for client in ("stdlib", "httpx"):
            server_ms, client_ms, status = measure(port, "/", proc.pid, requests, client=client)
            out.append(Floor(f"bare FastAPI route, {client} client", server_ms, client_ms, status))
        return out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def omnijourney_floors(workdir: Path, requests: int) -> list[Floor]:
    from omnijourney.access.service import create_token
    from omnijourney.store import db, migrate

    url = f"sqlite:///{workdir / 'floor.db'}"
    engine = db.create_engine(url)
    try:
        migrate.upgrade(engine)
        with db.write(engine) as conn:
            token = create_token(conn=conn, role="agent", name="bench-http-floor")
    finally:
        engine.dispose()
    server = Server(url, workdir, synchronous="FULL", pipeline=False)
    try:
        server.wait_healthy()
        port, pid = server.port, server.proc.pid
        out = []
        s, c, status = measure(port, "/health", pid, requests)
        out.append(Floor("omnijourney GET /health", s, c, status))
        s, c, status = measure(
            port,
            "/api/profiles/lookup?type=email&value=nobody%40example.com",
            pid,
            requests,
            headers={"Authorization": f"Bearer {token}"},
        )
        out.append(Floor("omnijourney lookup, unknown e-mail (404)", s, c, status))
        return out
    finally:
        server.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--requests", type=int, default=3000, help="timed requests per case (default 3000)")
    p.add_argument(
        "--cores", type=int, default=os.cpu_count() or 1, help="cores to reason about (default: this machine's)"
    )
    p.add_argument("--sessions", type=int, default=50, help="closed-loop sessions to reason about (default 50)")
    args = p.parse_args(argv)
    if min(args.requests, args.cores, args.sessions) < 1:
        p.error("--requests, --cores and --sessions must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    from rich.table import Table

    args = parse_args(argv)
    console = make_console()
    workdir = Path(tempfile.mkdtemp(prefix="oj-bench-floor-"))
    floors: list[Floor] = []
    try:
        floors += bare_floor(workdir, args.requests)
        floors += omnijourney_floors(workdir, args.requests)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    load: Any = os.getloadavg()[0]
    table = Table(
        title=f"CPU per request, one at a time ({args.requests:,} each); "
        f"bounds for {args.sessions} closed-loop sessions on {args.cores} cores"
    )
    for col in ("case", "status", "server ms", "client ms", "total ms", "max req/s", "mean latency ≥ ms"):
        table.add_column(col, justify="left" if col == "case" else "right")
    for f in floors:
        table.add_row(
            f.case,
            str(f.status),
            f"{f.server_ms:.3f}",
            f"{f.client_ms:.3f}",
            f"{f.total_ms:.3f}",
            f"{f.max_rps(args.cores):,.0f}",
            f"{f.closed_loop_ms(args.cores, args.sessions):.1f}",
        )
    console.print(table)
    for f in floors:
        print(
            f"floor case={f.case.replace(' ', '_')} status={f.status} server_ms={f.server_ms:.3f} "
            f"client_ms={f.client_ms:.3f} max_rps={f.max_rps(args.cores):.0f} "
            f"closed_loop_mean_ms={f.closed_loop_ms(args.cores, args.sessions):.1f} load={load:.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""CPU time of validating one SDK-shaped 100-event batch, as the tracking API does it.

Per request body (pre-built, the bodies `ingest.py` sends): parse the JSON, search it once for a
NUL escape, validate every message with `validate_message`. Only the CPU time of this process is
counted (`time.process_time`), so the figure means something on a busy machine; run A/B
comparisons back to back, several times.

    .venv/bin/python -m benchmarks.validation                    # 2,000 batches, 5 rounds
    .venv/bin/python -m benchmarks.validation --nul-check message   # search every message instead
    PYTHONPATH=/path/to/other/src .venv/bin/python -m benchmarks.validation   # another version's code

It is a script, not a test.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time

import orjson

from benchmarks.ingest import build_batch
from omnijourney.config import IngestLimits
from omnijourney.ingest.schemas import ValidMessage, parse_time, validate_message
from omnijourney.store.base import utcnow


def has_nul_escape(data: bytes) -> bool:
    return b"\\" in data and b"\\u0000" in data


def run(bodies: list[bytes], mode: str) -> float:
    """CPU seconds to validate every body once."""
    limits = IngestLimits()
    has_flag = "may_contain_nul" in inspect.signature(validate_message).parameters
    start = time.process_time()
    for raw in bodies:
        body = orjson.loads(raw)
        received_at = utcnow()
        sent_at = parse_time(body.get("sentAt"))
        extra = {}
        if has_flag and mode == "request":
            extra["may_contain_nul"] = has_nul_escape(raw)
        for message in body["batch"]:
            result = validate_message(
                message,
                default_type=None,
                source_channel="web",
                received_at=received_at,
                batch_sent_at=sent_at,
                client_ip="127.0.0.1",
                limits=limits,
                **extra,
            )
            assert isinstance(result, ValidMessage), result
    return time.process_time() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--nul-check", choices=("request", "message"), default="request")
    args = p.parse_args()
    bodies = [orjson.dumps(build_batch(7, n, args.batch_size)) for n in range(args.batches)]
    run(bodies[:50], args.nul_check)  # warm up
    per_batch = [run(bodies, args.nul_check) / args.batches * 1e6 for _ in range(args.rounds)]
    print(
        f"validation CPU per {args.batch_size}-event batch ({args.nul_check} NUL check): "
        f"min {min(per_batch):.0f} µs, median {statistics.median(per_batch):.0f} µs "
        f"over {args.rounds} rounds of {args.batches} batches"
    )


if __name__ == "__main__":
    main()

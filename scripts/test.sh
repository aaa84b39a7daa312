#!/usr/bin/env bash
# The whole test suite, on SQLite and on a real PostgreSQL server (started by the tests
# from the Debian binaries). Installs what it needs first. Extra arguments go to pytest,
# e.g. `scripts/test.sh -m "not postgres"` for a quick SQLite-only run. Tests run on
# OMNIJOURNEY_TEST_WORKERS xdist workers (default 4: with 2 workers the suite kept under one of the two
# cores busy, as many tests wait on servers, subprocesses and Chromium); `scripts/test.sh -n 0` runs them in one process.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh --with-test-services
.venv/bin/ruff check src tests benchmarks
.venv/bin/ruff format --check src tests benchmarks
exec .venv/bin/python -m pytest -p no:cacheprovider -n "${OMNIJOURNEY_TEST_WORKERS:-4}" --dist loadgroup "$@"

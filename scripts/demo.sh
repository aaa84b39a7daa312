#!/usr/bin/env bash
# Starts omnijourney with its demo retailer on the embedded default (SQLite under
# ./omnijourney-data) and prints the URL. Installs what it needs first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/bootstrap.sh
exec .venv/bin/omnijourney demo "$@"

#!/usr/bin/env bash
# Installs everything omnijourney needs on a fresh Debian machine with Python 3.11:
# system packages (PostgreSQL server binaries for the test suite) and the virtualenv.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it skips what is there).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

need_apt=()
if [[ "${OMNIJOURNEY_SKIP_SYSTEM_PACKAGES:-0}" != "1" && "${1:-}" == "--with-test-services" ]]; then
  ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need_apt+=(postgresql)
  command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
  [[ -x /usr/bin/chromium ]] || need_apt+=(chromium)  # the console's browser tests (Playwright drives it)
  command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)  # Apache Spark (analytics tests)
fi
if ((${#need_apt[@]})); then
  echo "installing system packages: ${need_apt[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.omnijourney-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi

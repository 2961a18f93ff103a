#!/usr/bin/env bash
# Install (Debian package) and start a PostgreSQL server on 127.0.0.1 for the integration tests.
# Idempotent: a server already running on the port is reused.
# Prints the SQLAlchemy URL on stdout (last line); when sourced, also exports PROVGUARD_TEST_PG_URL.
#   eval "$(bash .ci/postgres.sh | tail -n 1 | sed 's/^/export PROVGUARD_TEST_PG_URL=/')"
#   or: source .ci/postgres.sh
set -euo pipefail
PG_PORT="${PROVGUARD_PG_PORT:-55432}"
PG_DIR="${PROVGUARD_PG_DIR:-/tmp/provguard-pg}"
PG_DB=provguard_test

pg_bin() {
  local v
  for v in $(ls /usr/lib/postgresql 2>/dev/null | sort -rn); do
    if [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]; then echo "/usr/lib/postgresql/$v/bin"; return 0; fi
  done
  return 1
}

if ! BIN="$(pg_bin)"; then
  echo "installing postgresql (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  BIN="$(pg_bin)"
fi

# the server refuses to run as root: run it as the 'postgres' system user the package creates
RUN=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir "$PG_DIR" postgres
  RUN=(runuser -u postgres --)
fi

if ! "$BIN/pg_isready" -h 127.0.0.1 -p "$PG_PORT" -q; then
  mkdir -p "$PG_DIR"
  [ "$(id -u)" = 0 ] && chown postgres "$PG_DIR"
  if [ ! -f "$PG_DIR/data/PG_VERSION" ]; then
    "${RUN[@]}" "$BIN/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >&2
  fi
  "${RUN[@]}" "$BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$PG_DIR -c fsync=off" \
    start >&2
fi

if ! psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$PG_DB'" \
    | grep -q 1; then
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $PG_DB" >&2
fi

PROVGUARD_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/$PG_DB"
export PROVGUARD_TEST_PG_URL
echo "$PROVGUARD_TEST_PG_URL"

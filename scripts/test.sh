#!/usr/bin/env bash
# Runs every picloud test against real services this script starts itself:
# a private PostgreSQL cluster on a Unix socket (each #[sqlx::test] gets its own
# fresh database in it) and an SMTP server over TCP (aiosmtpd, tests/smtp/).
# If either cannot start, the run fails loudly.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/ensure-deps.sh"

PGBIN=$(if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then pg_config --bindir; else ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1; fi)
WORK=$(mktemp -d /tmp/picloud-test-pg.XXXXXX)
chmod 0711 "$WORK"
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}
stop_services() {
  if [ -s "$WORK/smtp.pid" ]; then kill "$(cat "$WORK/smtp.pid")" 2>/dev/null || true; fi
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate -w stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap stop_services EXIT
mkdir -p "$WORK/sock"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$WORK/sock"
[ "$(id -u)" -eq 0 ] && chown postgres:postgres "$WORK"
as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres --auth=trust --locale=C -E UTF8 >"$WORK/initdb.log" 2>&1 \
  || { echo "FATAL: initdb failed; see below" >&2; cat "$WORK/initdb.log" >&2; exit 1; }
cat >>"$WORK/data/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$WORK/sock'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
CONF
# The postmaster's output goes to a file: an inherited pipe would keep CI waiting.
if ! as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w -t 60 start </dev/null >/dev/null 2>&1; then
  echo "FATAL: the test PostgreSQL cluster did not start; its log follows" >&2
  cat "$WORK/pg.log" >&2 || true
  exit 1
fi
export DATABASE_URL="postgres://postgres@localhost/postgres?host=$WORK/sock"
"$PGBIN/psql" "$DATABASE_URL" -qAtc 'select 1' >/dev/null \
  || { echo "FATAL: cannot connect to the test PostgreSQL cluster at $WORK/sock" >&2; exit 1; }
echo "test PostgreSQL ready at $WORK/sock" >&2
SMTP_ENV=$("$ROOT/tests/smtp/start.sh" "$WORK")
eval "$SMTP_ENV"

if [ $# -gt 0 ]; then cargo test "$@"; exit; fi
cargo test --workspace --no-fail-fast

# The HTTP contract: schemathesis against a `picloud serve --dev` of this build.
cargo build -q -p picloud --bin picloud
"$ROOT/tests/contract/run.sh" "${CARGO_TARGET_DIR:-$ROOT/target}/debug/picloud"

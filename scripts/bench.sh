#!/usr/bin/env bash
# Benchmarks (never run in CI): HTTP invoke of a trivial script under wrk, beside the
# bare axum JSON echo anchor with the same wrk settings in the same run, and the
# executor's overhead for a cached trivial script, and secrets::get / seal / open. Prints numbers and the ratio.
# Usage: scripts/bench.sh [duration_secs]   (default 10)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
D=${1:-10}
ANCHORS=${ANCHORS:-$ROOT/../shared/anchors}
"$ROOT/scripts/ensure-deps.sh"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

cargo build --release -q -p picloud
echo "== executor overhead (cargo bench -p picloud-executor-core)"
cargo bench -q -p picloud-executor-core --bench executor
echo "== secrets (cargo bench -p picloud --bench secrets; embedded PostgreSQL)"
cargo bench -q -p picloud --bench secrets

WORK=$(mktemp -d /tmp/picloud-bench.XXXXXX); chmod 0711 "$WORK"
PORT=18080
env -u DATABASE_URL PICLOUD_DATA_DIR="$WORK/data" PICLOUD_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn \
  "${CARGO_TARGET_DIR:-$ROOT/target}/release/picloud" serve --dev >"$WORK/out.log" 2>&1 </dev/null &
SRV=$!
trap 'kill $SRV 2>/dev/null; wait $SRV 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
[ -f "$WORK/data/admin.key" ] || { echo "picloud did not start:" >&2; cat "$WORK/out.log" >&2; exit 1; }
KEY=$(cat "$WORK/data/admin.key")
H="Authorization: Bearer $KEY"
APP=$(curl -sf -H "$H" -H 'content-type: application/json' -d '{"name":"bench"}' \
  "http://127.0.0.1:$PORT/api/v1/admin/apps" | grep -o '"id":"[^"]*"' | cut -d'"' -f4)
curl -sf -H "$H" -H 'content-type: application/json' \
  -d '{"name":"inc","source":"let b = ctx.request.body; b.n + 1"}' \
  "http://127.0.0.1:$PORT/api/v1/admin/apps/$APP/scripts" >/dev/null
URL="http://127.0.0.1:$PORT/api/v1/apps/$APP/invoke/inc"
echo "sanity: $(curl -s -H "$H" -H 'content-type: application/json' -d '{"n":41}' "$URL")"
cat >"$WORK/invoke.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"n":41}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA
echo "== $(date -u +%FT%TZ) $(nproc) cores; uptime: $(uptime)"
echo "== picloud invoke: wrk -t2 -c32 -d${D}s"
wrk -t2 -c32 -d"${D}s" --latency -s "$WORK/invoke.lua" "$URL" | tee "$WORK/picloud.txt"
kill $SRV; wait $SRV 2>/dev/null || true
sleep 2

echo "== anchor: bare axum JSON echo (same wrk settings)"
env -u CARGO_TARGET_DIR "$ANCHORS/03-axum-echo.sh" "$D" | tee "$WORK/anchor.txt"

PI=$(grep 'Requests/sec' "$WORK/picloud.txt" | awk '{print $2}')
AX=$(grep 'Requests/sec' "$WORK/anchor.txt" | head -1 | awk '{print $2}')
echo
echo "picloud invoke  : $PI req/s (c32)"
echo "axum echo anchor: $AX req/s (c32)"
awk -v p="$PI" -v a="$AX" 'BEGIN { printf "ratio picloud-invoke / axum-echo = %.3f (target >= 0.25)\n", p / a }'

#!/usr/bin/env bash
# Benchmarks (never run in CI): HTTP invoke of a trivial script under wrk, beside the
# bare axum JSON echo anchor with the same wrk settings in the same run, and the
# executor's overhead for a cached trivial script, and secrets::get / seal / open. Prints numbers and the ratio.
# Usage: scripts/bench.sh [duration_secs]   (default 10)
#        BASELINE_BIN=/path/to/old/picloud scripts/bench.sh   (before/after in one run)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
D=${1:-10}
ANCHORS=${ANCHORS:-$ROOT/../shared/anchors}
"$ROOT/scripts/ensure-deps.sh"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }

cargo build --release -q -p picloud
echo "== executor overhead (cargo bench -p picloud-executor-core)"
cargo bench -q -p picloud-executor-core --bench executor --features testing
echo "== secrets (cargo bench -p picloud --bench secrets; embedded PostgreSQL)"
cargo bench -q -p picloud --bench secrets

WORK=$(mktemp -d /tmp/picloud-bench.XXXXXX); chmod 0711 "$WORK"
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

# bench_invoke BIN LABEL: serve --dev from BIN on a fresh data dir, wrk the invoke of a
# trivial script, print the wrk output to $WORK/LABEL.txt.
bench_invoke() {
  local bin=$1 label=$2 port=18080
  env -u DATABASE_URL PICLOUD_DATA_DIR="$WORK/$label-data" PICLOUD_LISTEN="127.0.0.1:$port" RUST_LOG=warn \
    "$bin" serve --dev >"$WORK/$label.log" 2>&1 </dev/null &
  local srv=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
  [ -f "$WORK/$label-data/admin.key" ] || { echo "picloud ($label) did not start:" >&2; cat "$WORK/$label.log" >&2; exit 1; }
  local key; key=$(cat "$WORK/$label-data/admin.key")
  local h="Authorization: Bearer $key"
  local app; app=$(curl -sf -H "$h" -H 'content-type: application/json' -d '{"name":"bench"}' \
    "http://127.0.0.1:$port/api/v1/admin/apps" | grep -o '"id":"[^"]*"' | cut -d'"' -f4)
  curl -sf -H "$h" -H 'content-type: application/json' \
    -d '{"name":"inc","source":"let b = ctx.request.body; b.n + 1"}' \
    "http://127.0.0.1:$port/api/v1/admin/apps/$app/scripts" >/dev/null
  local url="http://127.0.0.1:$port/api/v1/apps/$app/invoke/inc"
  echo "sanity ($label): $(curl -s -H "$h" -H 'content-type: application/json' -d '{"n":41}' "$url")"
  cat >"$WORK/invoke.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"n":41}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $key"
LUA
  echo "== $label invoke: wrk -t2 -c32 -d${D}s; uptime: $(uptime)"
  wrk -t2 -c32 -d"${D}s" --latency -s "$WORK/invoke.lua" "$url" | tee "$WORK/$label.txt"
  kill $srv; wait $srv 2>/dev/null || true
  sleep 2
}

echo "== $(date -u +%FT%TZ) $(nproc) cores"
bench_invoke "${CARGO_TARGET_DIR:-$ROOT/target}/release/picloud" picloud
# BASELINE_BIN=path/to/an/older/picloud: the same invoke, same run, for a before/after.
if [ -n "${BASELINE_BIN:-}" ]; then bench_invoke "$BASELINE_BIN" baseline; fi

echo "== anchor: bare axum JSON echo (same wrk settings)"
env -u CARGO_TARGET_DIR "$ANCHORS/03-axum-echo.sh" "$D" | tee "$WORK/anchor.txt"

AX=$(grep 'Requests/sec' "$WORK/anchor.txt" | head -1 | awk '{print $2}')
echo
echo "axum echo anchor: $AX req/s (c32)"
for label in picloud baseline; do
  [ -f "$WORK/$label.txt" ] || continue
  RPS=$(grep 'Requests/sec' "$WORK/$label.txt" | awk '{print $2}')
  echo "$label invoke: $RPS req/s (c32)"
  awk -v p="$RPS" -v a="$AX" -v l="$label" 'BEGIN { printf "ratio %s-invoke / axum-echo = %.3f (target >= 0.25)\n", l, p / a }'
done

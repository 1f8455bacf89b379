#!/usr/bin/env bash
# Dispatcher benchmark (never run in CI), beside graphile-worker in the same run, on
# the anchors' scratch PostgreSQL (fsync on; ../shared/anchors/00-pg-setup.sh):
#   - drain: 50,000 pre-filled events, trivial handler, 1 and 2 picloud processes (events/s)
#   - end to end: scripts producing events through kv::set, handled by a kv trigger (events/s)
#   - latency: enqueue → handler start at light load, p50 / p99 (picloud's histogram)
#   - sustained: drain rate in the first and the last minute of a long run (SUSTAIN_SECS, 600)
#   - graphile-worker 0.17.3: 02a drain (defaults and the batching preset), 02b latency
# Prints every figure and the ratios. Usage: scripts/bench-dispatch.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
ANCHORS=${ANCHORS:-$ROOT/../shared/anchors}
EVENTS=${EVENTS:-50000}
SUSTAIN_SECS=${SUSTAIN_SECS:-600}
PGBIN=/usr/lib/postgresql/15/bin
SOCK=/tmp/anchors-pg/sock
PSQL() { "$PGBIN/psql" -h "$SOCK" -p 5499 -U postgres -d picloud_bench -Atqc "$1"; }

"$ROOT/scripts/ensure-deps.sh"
cargo build --release -q -p picloud
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/picloud
"$ANCHORS/00-pg-setup.sh" >/dev/null
"$PGBIN/dropdb" -h "$SOCK" -p 5499 -U postgres --if-exists picloud_bench
"$PGBIN/createdb" -h "$SOCK" -p 5499 -U postgres picloud_bench
URL="postgres://postgres@localhost:5499/picloud_bench?host=$SOCK"
KEYB64=$("$BIN" keys generate | tail -n 1)
WORK=$(mktemp -d /tmp/picloud-bench-dispatch.XXXXXX); chmod 0711 "$WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT

# start_picloud N: a picloud process on the bench database, port 1819N; prints its pid.
start_picloud() {
  local n=$1 port=$((18190 + $1))
  env -u PICLOUD_DEV_MODE DATABASE_URL="$URL" PICLOUD_SECRET_KEY="$KEYB64" PICLOUD_DATA_DIR="$WORK/data$n" \
    PICLOUD_LISTEN="127.0.0.1:$port" RUST_LOG=warn "$BIN" serve >"$WORK/serve$n.log" 2>&1 </dev/null &
  local pid=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/healthz" >/dev/null || { cat "$WORK/serve$n.log" >&2; exit 1; }
  echo "$pid"
}
stop_picloud() { kill "$1"; wait "$1" 2>/dev/null || true; }
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v s="$2" 'index($0, s) == 1 { print $NF }' | head -n 1; }

# Set-up through the API: an app, a trivial handler, a kv trigger on `in`, a producer script.
P0=$(start_picloud 0)
KEY=$(cat "$WORK/data0/admin.key")
H="Authorization: Bearer $KEY"
api() { curl -sf -H "$H" -H 'content-type: application/json' "$@"; }
APP=$(api -d '{"name":"bench"}' http://127.0.0.1:18190/api/v1/admin/apps | grep -o '"id":"[^"]*"' | cut -d'"' -f4)
SCRIPT=$(api -d '{"name":"noop","source":"1"}' "http://127.0.0.1:18190/api/v1/admin/apps/$APP/scripts" | grep -o '"id":"[^"]*"' | head -n 1 | cut -d'"' -f4)
api -d "{\"kind\":\"kv\",\"script_id\":\"$SCRIPT\",\"config\":{\"collection\":\"in\"}}" \
  "http://127.0.0.1:18190/api/v1/admin/apps/$APP/triggers" >/dev/null
api -d '{"name":"produce","source":"let n = ctx.request.body.n; for i in 0..n { kv::set(\"in\", \"k\" + i, i); }"}' \
  "http://127.0.0.1:18190/api/v1/admin/apps/$APP/scripts" >/dev/null
stop_picloud "$P0"

# feed N: N events into the outbox, as N writes would (no vacuum: autovacuum only).
feed() {
  PSQL "INSERT INTO outbox (app_id, trigger_id, script_id, source_kind, payload, max_attempts, backoff, base_ms, trigger_depth)
        SELECT '$APP', t.id, t.script_id, 'kv', jsonb_build_object('kind','kv','op','set','collection','in','key','k' || n,'value',n), 3, 'exponential', 1000, 1
        FROM triggers t, generate_series(1, $1) n WHERE t.app_id = '$APP'" >/dev/null
}
# prefill N: feed, then vacuum and analyse, as the graphile-worker anchor does before timing.
prefill() {
  feed "$1"
  PSQL "VACUUM ANALYZE outbox" >/dev/null
}
# drain PROCS: pre-fill EVENTS events with no process running, start PROCS processes, time until empty.
drain() {
  local procs=$1 pids=()
  prefill "$EVENTS"
  local t0; t0=$(date +%s.%N)
  for n in $(seq 1 "$procs"); do pids+=("$(start_picloud "$n")"); done
  while [ "$(PSQL 'SELECT count(*) FROM outbox')" != "0" ]; do sleep 0.05; done
  local t1; t1=$(date +%s.%N)
  for p in "${pids[@]}"; do stop_picloud "$p"; done
  # Start-up (about 0.1 s, measured inside the window) counts against picloud.
  python3 -c "print(f'{$EVENTS / ($t1 - $t0):.0f}')"
}

echo "== $(date -u +%FT%TZ) $(nproc) cores; uptime: $(uptime)"
D1=$(drain 1); echo "picloud drain, 1 process: $D1 events/s ($EVENTS events, trivial handler)"
D2=$(drain 2); echo "picloud drain, 2 processes: $D2 events/s"

# End to end: 50 invokes of `produce` (200 kv::set each), handled by the kv trigger.
P1=$(start_picloud 1)
T0=$(date +%s.%N)
seq 1 50 | xargs -P 8 -I{} curl -sf -o /dev/null -H "$H" -H 'content-type: application/json' -d '{"n":200}' \
  "http://127.0.0.1:18191/api/v1/apps/$APP/invoke/produce"
while [ "$(PSQL 'SELECT count(*) FROM outbox')" != "0" ]; do sleep 0.05; done
T1=$(date +%s.%N)
E2E=$(python3 -c "print(f'{10000 / ($T1 - $T0):.0f}')")
echo "picloud end to end, 1 process: $E2E events/s (10,000 kv::set in scripts → kv trigger handler)"

# Latency at light load: one produced event every 20 ms for 10 s.
before=$(curl -s http://127.0.0.1:18191/metrics | grep '^picloud_dispatch_latency_seconds_bucket')
for _ in $(seq 1 500); do
  curl -sf -o /dev/null -H "$H" -H 'content-type: application/json' -d '{"n":1}' \
    "http://127.0.0.1:18191/api/v1/apps/$APP/invoke/produce"
  sleep 0.02
done
sleep 1
after=$(curl -s http://127.0.0.1:18191/metrics | grep '^picloud_dispatch_latency_seconds_bucket')
LAT=$(python3 - "$before" "$after" <<'PY'
import re, sys
def parse(text):
    out = {}
    for line in text.splitlines():
        m = re.search(r'le="([^"]+)"\} (\S+)', line)
        if m: out[m.group(1)] = float(m.group(2))
    return out
b, a = parse(sys.argv[1]), parse(sys.argv[2])
les = sorted((float(k) if k != "+Inf" else float("inf"), a[k] - b.get(k, 0)) for k in a)
total = les[-1][1]
def q(p):
    prev_le, prev_n = 0.0, 0.0
    for le, n in les:
        if n >= p * total:
            if le == float("inf"): return prev_le
            # linear within the bucket
            return prev_le + (le - prev_le) * ((p * total - prev_n) / max(n - prev_n, 1e-9))
        prev_le, prev_n = le, n
print(f"{q(0.5)*1000:.2f} {q(0.99)*1000:.2f} {int(total)}")
PY
)
read -r P50 P99 LN <<<"$LAT"
echo "picloud enqueue → start at light load: p50 ${P50} ms, p99 ${P99} ms ($LN events; interpolated in histogram buckets)"
stop_picloud "$P1"

# Sustained: producers keep the outbox full; handled per minute, first vs last.
if [ "$SUSTAIN_SECS" -gt 0 ]; then
  P1=$(start_picloud 1)
  # Keep 20,000-60,000 events waiting, so the dispatcher is never idle.
  (while true; do [ "$(PSQL 'SELECT count(*) FROM outbox')" -lt 20000 ] && feed 40000; sleep 0.2; done) &
  FEEDER=$!
  series='picloud_handler_runs_total{kind="kv",outcome="ok"}'
  m0=$(metric 18191 "$series"); sleep 60; m1=$(metric 18191 "$series")
  sleep $((SUSTAIN_SECS - 120)); m2=$(metric 18191 "$series"); sleep 60; m3=$(metric 18191 "$series")
  kill $FEEDER; wait $FEEDER 2>/dev/null || true
  echo "picloud sustained ${SUSTAIN_SECS}s: first minute $(python3 -c "print(f'{($m1-$m0)/60:.0f}')") events/s, last minute $(python3 -c "print(f'{($m3-$m2)/60:.0f}')") events/s; outbox rows left $(PSQL 'SELECT count(*) FROM outbox'), table size $(PSQL "SELECT pg_size_pretty(pg_total_relation_size('outbox'))")"
  stop_picloud "$P1"
fi

echo "== anchor: graphile-worker drain (02a), defaults and the batching preset"
if [ ! -d /tmp/anchors-gw/node_modules/graphile-worker ]; then  # as 02a-gw-drain.sh installs it
  mkdir -p /tmp/anchors-gw && (cd /tmp/anchors-gw && npm init -y >/dev/null && npm install graphile-worker@0.17.3 >/dev/null)
fi
"$PGBIN/psql" -h "$SOCK" -p 5499 -U postgres -Atqc "select 1 from pg_database where datname='gw'" | grep -q 1 \
  || "$PGBIN/createdb" -h "$SOCK" -p 5499 -U postgres gw
GW_DEF=$(NODE_PATH=/tmp/anchors-gw/node_modules timeout 400 node "$ANCHORS/02a-gw-drain.js" defaults '{}' | grep -o '=> [0-9]* jobs/s (table empty)' | grep -o '[0-9]*' | head -n 1)
GW_BAT=$(NODE_PATH=/tmp/anchors-gw/node_modules timeout 400 node "$ANCHORS/02a-gw-drain.js" lq1000-cjb100 '{"localQueue":{"size":1000},"completeJobBatchDelay":100,"failJobBatchDelay":100}' | grep -o '=> [0-9]* jobs/s (table empty)' | grep -o '[0-9]*' | head -n 1)
echo "graphile-worker drain: defaults $GW_DEF jobs/s, batching preset $GW_BAT jobs/s"
echo "== anchor: graphile-worker latency (02b)"
GW_LAT=$(NODE_PATH=/tmp/anchors-gw/node_modules timeout 120 node "$ANCHORS/02b-gw-latency.js" defaults '{}' | tail -n 3)
echo "$GW_LAT"
echo "== ratios (same run)"
python3 -c "print(f'drain, 1 process / graphile-worker batching: {$D1 / $GW_BAT:.2f}; 2 processes: {$D2 / $GW_BAT:.2f}; 1 process / graphile-worker defaults: {$D1 / $GW_DEF:.2f}')"

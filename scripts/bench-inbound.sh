#!/usr/bin/env bash
# Benchmark (never run in CI): accepted signed inbound-email POSTs per second and
# their latency, picloud on the anchors' PostgreSQL (fsync and synchronous_commit
# on, ../shared/anchors/00-pg-setup.sh), and in the same run the pgbench anchor
# (01-pgbench-insert.sh: one durable JSONB insert per transaction); prints the ratio.
# Each POST is verified (X-PiCloud-Signature), parsed, and committed as an outbox
# row (no dedupe key, so every one is new); the dispatcher runs a trivial handler
# meanwhile, on the same 2 cores. The machine is shared and noisy, so the two
# alternate for ROUNDS rounds (the outbox drained before each pgbench run) and
# the median ratio is printed.
# Usage: scripts/bench-inbound.sh [duration_secs] [rounds]   (default 15, 3)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
D=${1:-15}
ROUNDS=${2:-3}
ANCHORS=${ANCHORS:-$ROOT/../shared/anchors}
PGBIN=/usr/lib/postgresql/15/bin
SOCK=/tmp/anchors-pg/sock
"$ROOT/scripts/ensure-deps.sh"
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
cargo build --release -q -p picloud
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/picloud
"$ANCHORS/00-pg-setup.sh" >/dev/null
"$PGBIN/dropdb" -h "$SOCK" -p 5499 -U postgres --if-exists picloud_inbound
"$PGBIN/createdb" -h "$SOCK" -p 5499 -U postgres picloud_inbound
URL="postgres://postgres@localhost:5499/picloud_inbound?host=$SOCK"
KEYB64=$("$BIN" keys generate | tail -n 1)
WORK=$(mktemp -d /tmp/picloud-bench-inbound.XXXXXX); chmod 0711 "$WORK"
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=18195
env -u PICLOUD_DEV_MODE DATABASE_URL="$URL" PICLOUD_SECRET_KEY="$KEYB64" PICLOUD_DATA_DIR="$WORK/data" \
  PICLOUD_LISTEN="127.0.0.1:$PORT" PICLOUD_INBOUND_RATE_PER_MIN=6000000 RUST_LOG=warn \
  "$BIN" serve >"$WORK/serve.log" 2>&1 </dev/null &
SERVER=$!
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.1; done
KEY=$(cat "$WORK/data/admin.key")
H="Authorization: Bearer $KEY"
api() { curl -sf -H "$H" -H 'content-type: application/json' "$@"; }
APP=$(api -d '{"name":"bench"}' "http://127.0.0.1:$PORT/api/v1/admin/apps" | grep -o '"id":"[^"]*"' | cut -d'"' -f4)
SCRIPT=$(api -d '{"name":"noop","source":"1"}' "http://127.0.0.1:$PORT/api/v1/admin/apps/$APP/scripts" | grep -o '"id":"[^"]*"' | head -n 1 | cut -d'"' -f4)
SECRET=bench-inbound-secret-0123456789
TRIGGER=$(api -d "{\"kind\":\"email\",\"script_id\":\"$SCRIPT\",\"config\":{\"inbound_secret\":\"$SECRET\"}}" \
  "http://127.0.0.1:$PORT/api/v1/admin/apps/$APP/triggers" | grep -o '"id":"[^"]*"' | head -n 1 | cut -d'"' -f4)
BODY='{"from":"Ann <ann@example.com>","to":["support@example.org"],"subject":"Order 42","text":"Where is my order?"}'
SIG=$(printf '%s' "$BODY" | python3 -c "import hmac, hashlib, sys; print('sha256=' + hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha256).hexdigest())" "$SECRET")
cat >"$WORK/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-PiCloud-Signature"] = "$SIG"
LUA
code=$(curl -s -o /dev/null -w '%{http_code}' -H 'content-type: application/json' -H "X-PiCloud-Signature: $SIG" \
  -d "$BODY" "http://127.0.0.1:$PORT/api/v1/email-inbound/$TRIGGER")
[ "$code" = 202 ] || { echo "a signed POST answered $code, not 202" >&2; cat "$WORK/serve.log" >&2; exit 1; }
PSQL="$PGBIN/psql -h $SOCK -p 5499 -U postgres -d picloud_inbound -Atq"
echo "== $(date -u +%FT%TZ) 2 cores; $(uptime)"
for round in $(seq 1 "$ROUNDS"); do
  echo "== round $round: picloud, signed inbound POSTs, wrk -t2 -c16 -d${D}s"
  wrk -t2 -c16 -d"${D}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$PORT/api/v1/email-inbound/$TRIGGER" | tee "$WORK/wrk.$round.txt"
  # The handlers finish before the anchor runs, so they do not slow it.
  for _ in $(seq 1 600); do [ "$($PSQL -c 'SELECT count(*) FROM outbox')" = 0 ] && break; sleep 0.5; done
  echo "== round $round: anchor, pgbench, one durable JSONB insert per transaction"
  "$ANCHORS/01-pgbench-insert.sh" "$D" | tee "$WORK/pgbench.$round.txt"
done
ACCEPTED=$(curl -s "http://127.0.0.1:$PORT/metrics" | awk 'index($0, "picloud_inbound_requests_total{result=\"accepted\"}") == 1 { print $NF }')
echo "accepted (metric): $ACCEPTED"
kill "$SERVER" 2>/dev/null || true
wait "$SERVER" 2>/dev/null || true
python3 - "$WORK" "$ROUNDS" <<'PY'
import re, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
ratios = []
for r in range(1, rounds + 1):
    wrk = open(f"{work}/wrk.{r}.txt").read()
    pg = open(f"{work}/pgbench.{r}.txt").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", wrk).group(1))
    p99 = re.search(r"99%\s+(\S+)", wrk).group(1)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", wrk)
    tps = [float(x) for x in re.findall(r"tps = ([\d.]+)", pg)]
    ratios.append(rps / tps[0])
    print(f"round {r}: picloud accepted signed POSTs {rps:.0f}/s, p99 {p99} "
          f"(non-2xx: {non2xx.group(1) if non2xx else 0}); pgbench c=16 {tps[0]:.0f} tps; ratio {rps / tps[0]:.2f}")
print(f"median ratio over {rounds} rounds: {statistics.median(ratios):.2f}")
PY

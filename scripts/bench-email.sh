#!/usr/bin/env bash
# Benchmark (never run in CI): outbound email against a local SMTP server
# (aiosmtpd in sink mode, tests/smtp/): picloud's pooled transport against one
# connection per message, 1 and 8 concurrent senders; then the whole path, a
# script calling email::send through `picloud serve`, 1 and 8 concurrent invokes.
# Usage: scripts/bench-email.sh [messages]   (default 2000)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
N=${1:-2000}
"$ROOT/scripts/ensure-deps.sh"
WORK=$(mktemp -d /tmp/picloud-bench-email.XXXXXX); chmod 0755 "$WORK"
cleanup() {
  [ -s "$WORK/smtp.pid" ] && kill "$(cat "$WORK/smtp.pid")" 2>/dev/null || true
  kill $(jobs -p) 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
eval "$("$ROOT/tests/smtp/start.sh" "$WORK" --sink)"

echo "== transport (cargo bench -p picloud-manager-core --bench email)"
EMAIL_BENCH_MESSAGES=$N cargo bench -q -p picloud-manager-core --bench email

echo "== whole path: scripts calling email::send through picloud serve (pooled)"
cargo build --release -q -p picloud
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/picloud
PORT=18090
env -u DATABASE_URL PICLOUD_DATA_DIR="$WORK/data" PICLOUD_LISTEN="127.0.0.1:$PORT" RUST_LOG=warn \
  PICLOUD_SMTP_HOST=127.0.0.1 PICLOUD_SMTP_PORT="$PICLOUD_TEST_SMTP_PORT" PICLOUD_SMTP_USER="$PICLOUD_TEST_SMTP_USER" \
  PICLOUD_SMTP_PASSWORD="$PICLOUD_TEST_SMTP_PASSWORD" PICLOUD_SMTP_TLS=none PICLOUD_EMAIL_FROM=shop@example.org \
  PICLOUD_SCRIPT_TIMEOUT_MS=600000 \
  "$BIN" serve --dev >"$WORK/serve.log" 2>&1 </dev/null &
for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null && break; sleep 0.2; done
KEY=$(cat "$WORK/data/admin.key")
H="Authorization: Bearer $KEY"
APP=$(curl -sf -H "$H" -H 'content-type: application/json' -d '{"name":"bench"}' \
  "http://127.0.0.1:$PORT/api/v1/admin/apps" | grep -o '"id":"[^"]*"' | cut -d'"' -f4)
curl -sf -H "$H" -H 'content-type: application/json' \
  -d '{"name":"mail","source":"let n = ctx.request.body; for i in 0..n { email::send(#{to: \"ann@example.com\", subject: \"Your order\", text: \"Thanks for your order.\"}) } n"}' \
  "http://127.0.0.1:$PORT/api/v1/admin/apps/$APP/scripts" >/dev/null
for C in 1 8; do
  PER=$((N / C))
  START=$(date +%s.%N)
  PIDS=()
  for _ in $(seq 1 "$C"); do
    curl -sf -H "$H" -H 'content-type: application/json' -d "$PER" \
      "http://127.0.0.1:$PORT/api/v1/apps/$APP/invoke/mail" >/dev/null &
    PIDS+=($!)
  done
  wait "${PIDS[@]}"
  END=$(date +%s.%N)
  python3 -c "import sys; n, s, e = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]); print(f'  {sys.argv[4]} concurrent scripts: {n / (e - s):7.0f} msg/s ({n} messages)')" \
    "$((PER * C))" "$START" "$END" "$C"
done
curl -sf "http://127.0.0.1:$PORT/metrics" | grep '^picloud_email_send_total{outcome="ok"}'

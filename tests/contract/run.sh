#!/usr/bin/env bash
# Holds a running picloud to its OpenAPI document: starts `picloud serve --dev`
# (embedded PostgreSQL, generated keys) in a fresh data dir and runs
# schemathesis (installed here into a private venv) over every operation, with
# every check and its stateful phase, configured by schemathesis.toml.
# Usage: tests/contract/run.sh PATH_TO_PICLOUD_BINARY
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:?usage: $0 PATH_TO_PICLOUD_BINARY}
ST_VERSION=4.32.5
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/picloud/schemathesis-$ST_VERSION

if [ ! -x "$VENV/bin/st" ]; then
  echo "installing schemathesis $ST_VERSION into $VENV ..." >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION" \
    || { echo "FATAL: could not install schemathesis from PyPI" >&2; exit 1; }
fi

WORK=$(mktemp -d /tmp/picloud-contract.XXXXXX)
# The embedded cluster runs as `postgres` when we are root: it must reach the data dir.
chmod 0755 "$WORK"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"

env -u DATABASE_URL -u PICLOUD_SECRET_KEY PICLOUD_DATA_DIR="$WORK/data" PICLOUD_LISTEN="127.0.0.1:$PORT" \
  "$BIN" serve --dev >"$WORK/serve.log" 2>&1 &
SERVER=$!
stop() {
  kill -TERM "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  rm -rf "$WORK"
}
trap stop EXIT

ready=0
for _ in $(seq 1 120); do
  if python3 -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" "$BASE/healthz" 2>/dev/null; then
    ready=1; break
  fi
  kill -0 "$SERVER" 2>/dev/null || break
  sleep 0.5
done
if [ "$ready" -ne 1 ] || [ ! -s "$WORK/data/admin.key" ]; then
  echo "FATAL: picloud serve --dev did not come up for the contract run; its log follows" >&2
  cat "$WORK/serve.log" >&2
  exit 1
fi

export PICLOUD_CONTRACT_KEY
PICLOUD_CONTRACT_KEY=$(cat "$WORK/data/admin.key")
# The configuration runs from a copy beside the fixtures it names (fixtures/*.dict).
mkdir -p "$WORK/fixtures"
cp "$HERE/schemathesis.toml" "$WORK/schemathesis.toml"
python3 "$HERE/fixtures.py" "$BASE" "$WORK/fixtures"

# The seed is fixed (schemathesis.toml); PICLOUD_CONTRACT_SEED=N explores another.
seed_flag=()
[ -n "${PICLOUD_CONTRACT_SEED:-}" ] && seed_flag=(--seed "$PICLOUD_CONTRACT_SEED")
cd "$WORK"
set +e
PYTHONPATH="$HERE" "$VENV/bin/st" --no-color --config-file "$WORK/schemathesis.toml" run "${seed_flag[@]}" "$BASE/api/v1/openapi.json" | tee "$WORK/st.log"
status=${PIPESTATUS[0]}
set -e
cases=$(sed -n 's/^ *\([0-9]*\) generated, .*/\1/p' "$WORK/st.log" | tail -n 1)
scenarios=$(sed -n 's/^ *Scenarios: *\([0-9]*\).*/\1/p' "$WORK/st.log" | tail -n 1)
reached=$(sed -n 's/^picloud contract: //p' "$WORK/st.log" | tail -n 1)
echo "contract (schemathesis $ST_VERSION): ${cases:-?} cases, ${scenarios:-?} stateful scenarios; ${reached:-no reachability report}" >&2
# Every operation of the document was tested, but the document's own
# (schemathesis leaves out the operation that serves the schema it tests) and
# those whose success is an endless event stream (left out in schemathesis.toml).
documented=$(python3 -c '
import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))
def streams(op):
    ok = op.get("responses", {}).get("200", {}).get("content", {})
    return "text/event-stream" in ok
print(sum(1 for path, item in doc["paths"].items() for method, op in item.items()
          if method in ("get", "put", "post", "delete", "patch") and path != "/api/v1/openapi.json"
          and not streams(op)))
' "$BASE/api/v1/openapi.json")
if [ "$status" -eq 0 ] && [ "${reached:-}" != "$documented of $documented operations answered 2xx" ]; then
  echo "FATAL: the document has $documented operations; the run reports: ${reached:-nothing}" >&2
  status=1
fi
# No key reached the log while ~1,500 requests were answered: the one line
# with a key is the first-start banner that prints the admin key once.
leaked=$({ grep -o 'pk_[A-Za-z0-9_-]*' "$WORK/serve.log" || true; } \
  | { grep -v -x -F "$PICLOUD_CONTRACT_KEY" || true; } | sort -u | wc -l)
banner=$(grep -c -F "$PICLOUD_CONTRACT_KEY" "$WORK/serve.log" || true)
if [ "$leaked" -ne 0 ] || [ "$banner" -ne 1 ]; then
  echo "FATAL: API keys reached picloud's log ($leaked other keys; the admin key on $banner lines, expected 1)" >&2
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo "FATAL: schemathesis found the server and its OpenAPI document disagree (above); picloud's log follows" >&2
  tail -n 50 "$WORK/serve.log" >&2
  exit 1
fi

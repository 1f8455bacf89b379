#!/usr/bin/env bash
# Runs picloud in zero-configuration dev mode: a private PostgreSQL cluster and a
# generated admin key under ./.picloud. Installs what is missing first.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/ensure-deps.sh"
exec cargo run --release -p picloud -- serve --dev "$@"

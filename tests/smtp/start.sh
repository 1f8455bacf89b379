#!/usr/bin/env bash
# Starts the test SMTP server (aiosmtpd, installed here into a private venv
# with the other Python test tools: standardwebhooks, the reference signer the
# inbound email tests use) on a free port and prints the environment the tests
# read, as `export` lines:
#   eval "$(tests/smtp/start.sh WORK_DIR)"
# The server's pid is in WORK_DIR/smtp.pid; its messages go to WORK_DIR/outbox.
# Fails loudly if it cannot be installed or does not come up.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${1:?usage: $0 WORK_DIR [--sink]}
shift
AIOSMTPD_VERSION=1.4.6
STANDARDWEBHOOKS_VERSION=1.1.0
VENV=${XDG_CACHE_HOME:-$HOME/.cache}/picloud/test-tools-$AIOSMTPD_VERSION-$STANDARDWEBHOOKS_VERSION
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import aiosmtpd, standardwebhooks' 2>/dev/null; then
  echo "installing aiosmtpd $AIOSMTPD_VERSION and standardwebhooks $STANDARDWEBHOOKS_VERSION into $VENV ..." >&2
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "aiosmtpd==$AIOSMTPD_VERSION" \
    "standardwebhooks==$STANDARDWEBHOOKS_VERSION" >&2 \
    || { echo "FATAL: could not install aiosmtpd and standardwebhooks from PyPI" >&2; exit 1; }
fi
mkdir -p "$WORK/outbox"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
USER=picloud-test
PASSWORD="smtp-pw-$(python3 -c 'import secrets; print(secrets.token_hex(12))')"
"$VENV/bin/python" "$HERE/server.py" "$PORT" "$USER" "$PASSWORD" "$WORK/outbox" "$@" \
  >"$WORK/smtp.log" 2>&1 </dev/null &
echo $! >"$WORK/smtp.pid"
for _ in $(seq 1 100); do
  grep -q '^ready' "$WORK/smtp.log" 2>/dev/null && break
  kill -0 "$(cat "$WORK/smtp.pid")" 2>/dev/null || break
  sleep 0.1
done
if ! grep -q '^ready' "$WORK/smtp.log" 2>/dev/null; then
  echo "FATAL: the test SMTP server did not start; its log follows" >&2
  cat "$WORK/smtp.log" >&2 || true
  exit 1
fi
echo "test SMTP server ready on 127.0.0.1:$PORT" >&2
echo "export PICLOUD_TEST_SMTP_PORT=$PORT"
echo "export PICLOUD_TEST_SMTP_USER=$USER"
echo "export PICLOUD_TEST_SMTP_PASSWORD=$PASSWORD"
echo "export PICLOUD_TEST_SMTP_OUTBOX=$WORK/outbox"
echo "export PICLOUD_TEST_PYTHON=$VENV/bin/python"

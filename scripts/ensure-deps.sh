#!/usr/bin/env bash
# Installs what picloud and its tests need on a fresh Debian machine, if missing:
# the Rust toolchain is assumed; PostgreSQL server binaries and python3 (with
# venv, for the contract run's schemathesis) come from apt.
set -euo pipefail

apt_updated=0
apt_install() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "FATAL: $* is missing and this user cannot apt-get install it; install it and retry" >&2
    exit 1
  fi
  if [ "$apt_updated" -eq 0 ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

pg_bindir() {
  if command -v pg_config >/dev/null 2>&1 && [ -x "$(pg_config --bindir)/initdb" ]; then
    pg_config --bindir; return
  fi
  ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1
}

if [ -z "$(pg_bindir)" ] || [ ! -x "$(pg_bindir)/initdb" ]; then
  echo "installing PostgreSQL server binaries (apt)..." >&2
  apt_install postgresql
fi
# The contract run installs schemathesis into a venv of its own.
if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  echo "installing python3 and its venv module (apt)..." >&2
  apt_install python3 python3-venv
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "FATAL: cargo is not installed; install Rust from https://rustup.rs and retry" >&2
  exit 1
fi

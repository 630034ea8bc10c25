#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian/Ubuntu machine: Chromium and its
# driver for the real-browser tests (Debian's packages; nothing downloads a browser),
# redis-server for the Celery backend tests (the tests start and stop it themselves), and
# the project with its [dev] extras. Idempotent; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then SUDO="sudo"; fi
if ! command -v chromium >/dev/null || ! command -v redis-server >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver \
    redis-server >/dev/null
fi
python -m pip install -q -e ".[dev]"

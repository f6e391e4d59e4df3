#!/usr/bin/env bash
# Sets everything up, then runs ruff (lint and format check) and the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! command -v chromium >/dev/null 2>&1; then  # the web page test drives Debian's Chromium
  echo "installing Debian's chromium (system package) for the web page test"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
echo "ruff: lint and format check (config in pyproject.toml)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
exec .venv/bin/python -m pytest tests "$@"

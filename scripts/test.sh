#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (slow tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
exec .venv/bin/python -m pytest tests "$@"

#!/usr/bin/env bash
# Installs the lowest transformers this project claims (pyproject.toml: transformers>=5.17) beside the lock, in
# .venv/lowest/, for `PYTHONPATH=.venv/lowest .venv/bin/python ...`: transformers 5.17.0 and what it needs that
# the lock has at another major version (huggingface_hub 1.x and its httpx). Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PINS=(transformers==5.17.0 huggingface_hub==1.33.0 httpx==0.28.1 httpcore==1.0.9 certifi==2026.10.19.post1)
exec bash scripts/pinned_target.sh .venv/lowest "${PINS[@]}"

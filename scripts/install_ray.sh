#!/usr/bin/env bash
# Installs the optional Ray engine (pyproject.toml extra `ray`; not in the lock) beside the lock, in .venv/ray/, for
# `PYTHONPATH=.venv/ray .venv/bin/python -m tokenization_prep pipeline --engine ray ...`: ray and only what it needs
# that the lock lacks (jsonschema and its deps), all pinned and --no-deps so no locked package is shadowed. Safe to
# rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
PINS=(ray==2.60.0 jsonschema==4.26.0 attrs==26.1.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  rpds-py==2026.9.1)
exec bash scripts/pinned_target.sh .venv/ray "${PINS[@]}"

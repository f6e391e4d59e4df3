#!/usr/bin/env bash
# Set up the project's virtual environment (.venv/) from Pipfile.lock. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIPENV_VENV_IN_PROJECT=1 PIPENV_NOSPIN=1 PIPENV_YES=1
if ! command -v pipenv >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check pipenv
fi
if [ -x .venv/bin/python ] && [ .venv/.synced -nt Pipfile.lock ] && [ .venv/.synced -nt pyproject.toml ]; then
  exit 0  # already in sync with the lock file and the package list
fi
pipenv sync --dev
touch .venv/.synced

#!/usr/bin/env bash
# Installs pinned packages, --no-deps, into a --target folder beside the lock: pinned_target.sh DIR PIN... (used with
# PYTHONPATH=DIR). The pins are stamped in DIR, so a rerun with the same pins is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="$1"
shift
if [ -f "$DIR/.pins" ] && [ "$(cat "$DIR/.pins")" = "$*" ]; then
  exit 0
fi
rm -rf "$DIR"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --target "$DIR" "$@"
echo "$*" >"$DIR/.pins"

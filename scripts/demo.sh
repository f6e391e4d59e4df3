#!/usr/bin/env bash
# The main job on the bundled real data: sets everything up, then runs the whole pipeline
# (data_prep -> tokenization -> stage 1 -> stage 2 -> one chat reply). Rerunning skips finished steps.
# Pass --quick for 2 training steps per stage.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
exec .venv/bin/python scripts/demo.py "$@"

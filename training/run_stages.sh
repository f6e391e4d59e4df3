#!/usr/bin/env bash
# Run BLOOMChat's two stages in order: stage 1 (OIG), then stage 2 (Dolly+OASST) from stage 1's weights.
# Usage: training/run_stages.sh [CONFIG_DIR] [extra flags of `python -m training run`, e.g. --resume]
#   CONFIG_DIR: training/configs (real runs, GPUs) or training/configs/demo (CPU demo); default: the demo.
#   LAUNCHER: how to start a stage; default one process with python. Several GPUs or nodes, e.g.
#     LAUNCHER="deepspeed --num_gpus 8" or LAUNCHER="deepspeed --hostfile hostfile" training/run_stages.sh training/configs
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [ -x "$PY" ] || PY=python3
CONFIGS="${1:-$ROOT/training/configs/demo}"
shift $(( $# < 1 ? $# : 1 ))
cd "$ROOT"
for stage in stage1_oig stage2_oa_dolly; do
  if [ -n "${LAUNCHER:-}" ]; then
    $LAUNCHER "$ROOT/training/run.py" --config "$CONFIGS/$stage.yaml" "$@"
  else
    "$PY" -m training run --config "$CONFIGS/$stage.yaml" "$@"
  fi
done

#!/usr/bin/env bash
# BLOOMChat's tokenization: the pipeline with a recipe of tokenization_prep/configs/ (tokenization_oa_dolly.sh and
# tokenization_openchatkit.sh call this). Input and output default to BLOOMChat's paths under the repo root.
# Usage: bloomchat_tokenize.sh RECIPE DEFAULT_INPUT DEFAULT_OUTPUT [TOKENIZER] [INPUT] [OUTPUT] [extra flags...]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [ -x "$PY" ] || PY=python3
RECIPE="$1"; DEFAULT_INPUT="$2"; DEFAULT_OUTPUT="$3"; shift 3
TOKENIZER=(); [ -n "${1:-}" ] && TOKENIZER=(--pretrained_tokenizer "$1")  # default: the recipe's (bigscience/bloom)
INPUT="${2:-$DEFAULT_INPUT}"
OUTPUT="${3:-$DEFAULT_OUTPUT}"
shift $(( $# < 3 ? $# : 3 ))
cd "$ROOT"
exec "$PY" -m tokenization_prep pipeline --config "$RECIPE" --input_path "$INPUT" --output_path "$OUTPUT" \
  "${TOKENIZER[@]}" "$@"

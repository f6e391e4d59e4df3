#!/usr/bin/env bash
# BLOOMChat's stage-2 tokenization (Dolly + OASST1), runnable anywhere.
# Usage: tokenization_prep/tokenization_oa_dolly.sh [TOKENIZER] [INPUT_JSONL] [OUTPUT_DIR] [extra flags...]
# BLOOMChat passed a bare "greedy", which generative_data_prep no longer accepts: greedy::drop is its meaning.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [ -x "$PY" ] || PY=python3
TOKENIZER="${1:-bigscience/bloom}"
INPUT="${2:-$ROOT/data_prep/oasst1_dolly.jsonl}"
OUTPUT="${3:-$ROOT/tokenization_prep/oasst1_dolly_out}"
shift $(( $# < 3 ? $# : 3 ))
cd "$ROOT"
exec "$PY" -m tokenization_prep pipeline --input_path "$INPUT" --output_path "$OUTPUT" \
  --dev_ratio 0.0 --test_ratio 0.0 --shuffle on_RAM --pretrained_tokenizer "$TOKENIZER" \
  --max_seq_length 2048 --input_packing_config greedy::drop --num_training_splits 8 "$@"

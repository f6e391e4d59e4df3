#!/usr/bin/env bash
# BLOOMChat's stage-1 tokenization (OIG subsample), runnable anywhere.
# Usage: tokenization_prep/tokenization_openchatkit.sh [TOKENIZER] [INPUT_JSONL] [OUTPUT_DIR] [extra flags...]
# BLOOMChat passed a bare "greedy", which generative_data_prep no longer accepts: greedy::drop is its meaning.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [ -x "$PY" ] || PY=python3
TOKENIZER="${1:-bigscience/bloom}"
INPUT="${2:-$ROOT/data_prep/bloom_ock_100K_each.jsonl}"
OUTPUT="${3:-$ROOT/tokenization_prep/bloom_ock_100k_out}"
shift $(( $# < 3 ? $# : 3 ))
cd "$ROOT"
exec "$PY" -m tokenization_prep pipeline --input_path "$INPUT" --output_path "$OUTPUT" \
  --dev_ratio 0.0 --test_ratio 0.0 --shuffle on_RAM --pretrained_tokenizer "$TOKENIZER" \
  --max_seq_length 2048 --input_packing_config greedy::drop --num_training_splits 8 "$@"

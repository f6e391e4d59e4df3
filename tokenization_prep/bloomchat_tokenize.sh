#!/usr/bin/env bash
# BLOOMChat's tokenization settings, shared by tokenization_oa_dolly.sh and tokenization_openchatkit.sh.
# Usage: bloomchat_tokenize.sh DEFAULT_INPUT DEFAULT_OUTPUT [TOKENIZER] [INPUT] [OUTPUT] [extra flags...]
# BLOOMChat passed a bare "greedy", which generative_data_prep no longer accepts: greedy::drop is its meaning.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$ROOT/.venv/bin/python}"; [ -x "$PY" ] || PY=python3
DEFAULT_INPUT="$1"; DEFAULT_OUTPUT="$2"; shift 2
TOKENIZER="${1:-bigscience/bloom}"
INPUT="${2:-$DEFAULT_INPUT}"
OUTPUT="${3:-$DEFAULT_OUTPUT}"
shift $(( $# < 3 ? $# : 3 ))
cd "$ROOT"
exec "$PY" -m tokenization_prep pipeline --input_path "$INPUT" --output_path "$OUTPUT" \
  --dev_ratio 0.0 --test_ratio 0.0 --shuffle on_RAM --pretrained_tokenizer "$TOKENIZER" \
  --max_seq_length 2048 --input_packing_config greedy::drop --num_training_splits 8 "$@"

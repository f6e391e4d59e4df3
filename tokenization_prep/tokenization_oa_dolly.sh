#!/usr/bin/env bash
# BLOOMChat's stage-2 tokenization (Dolly + OASST1): tokenization_prep/configs/bloomchat_oa_dolly.yaml, runnable anywhere.
# Usage: tokenization_prep/tokenization_oa_dolly.sh [TOKENIZER] [INPUT_JSONL] [OUTPUT_DIR] [extra flags...]
# Defaults: bigscience/bloom, data_prep/oasst1_dolly.jsonl, tokenization_prep/oasst1_dolly_out/
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$ROOT/tokenization_prep/bloomchat_tokenize.sh" "$ROOT/tokenization_prep/configs/bloomchat_oa_dolly.yaml" \
  "$ROOT/data_prep/oasst1_dolly.jsonl" "$ROOT/tokenization_prep/oasst1_dolly_out" "$@"

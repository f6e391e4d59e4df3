#!/usr/bin/env bash
# BLOOMChat's stage-1 tokenization (OIG subsample): tokenization_prep/configs/bloomchat_openchatkit.yaml, runnable
# anywhere.
# Usage: tokenization_prep/tokenization_openchatkit.sh [TOKENIZER] [INPUT_JSONL] [OUTPUT_DIR] [extra flags...]
# Defaults: bigscience/bloom, data_prep/bloom_ock_100K_each.jsonl, tokenization_prep/bloom_ock_100k_out/
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$ROOT/tokenization_prep/bloomchat_tokenize.sh" \
  "$ROOT/tokenization_prep/configs/bloomchat_openchatkit.yaml" "$ROOT/data_prep/bloom_ock_100K_each.jsonl" \
  "$ROOT/tokenization_prep/bloom_ock_100k_out" "$@"

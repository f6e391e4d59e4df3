#!/usr/bin/env bash
# The main job on the bundled real data: sets everything up, then runs the pipeline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
export TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
echo "== data_prep: Dolly-15k + OASST1 -> data_prep/oasst1_dolly.jsonl"
$PY data_prep/prepare_oa_dolly.py \
  --dolly data/samples/dolly/databricks-dolly-15k.jsonl.gz \
  --oasst data/samples/oasst1/oasst1_validation_en.jsonl
echo "== data_prep: OIG -> data_prep/bloom_ock_100K_each.jsonl"
$PY data_prep/subsample_openchatkit.py --oig data/samples/oig

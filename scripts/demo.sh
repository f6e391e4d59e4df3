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
echo "== tokenization_prep: both files -> packed HDF5 splits (Pythia tokenizer, bundled)"
bash tokenization_prep/tokenization_oa_dolly.sh data/tokenizers/gpt-neox-20b "" "" --overwrite_output_path
bash tokenization_prep/tokenization_openchatkit.sh data/tokenizers/gpt-neox-20b "" "" --overwrite_output_path
echo "== training: stage 1 (OIG) then stage 2 (Dolly+OASST) from stage 1's weights (tiny Pythia-shaped model, CPU)"
bash training/run_stages.sh training/configs/demo
$PY -m training.plot_losses training/ckpt/loss_curves.png training/ckpt/stage1_oig training/ckpt/stage2_oa_dolly
echo "== artifacts"
echo "  data_prep/oasst1_dolly.jsonl (+ .rejects.jsonl, .summary.json)"
echo "  data_prep/bloom_ock_100K_each.jsonl (+ .rejects.jsonl, .summary.json)"
echo "  tokenization_prep/oasst1_dolly_out/   (train_*_of_8.hdf5, metadata.yaml, data_report.md, *.png, tokenizer/)"
echo "  tokenization_prep/bloom_ock_100k_out/ (same layout)"
echo "  training/ckpt/stage1_oig/final, training/ckpt/stage2_oa_dolly/final (save_pretrained dirs, lineage.json)"
echo "  training/ckpt/*/logs (TensorBoard, metrics.jsonl), training/ckpt/loss_curves.png"

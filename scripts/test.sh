#!/usr/bin/env bash
# Sets everything up, then runs ruff (lint and format check), the whole test suite (slow tests included; the
# training tests in one lane, the rest in another) and the training and inference tests again with the lowest
# transformers we claim (scripts/lowest_versions.sh).
#   bash scripts/test.sh --fast [ARGS]   your own loop: lint and every test not marked slow, in two lanes (ARGS are
#                                        passed to both pytest runs, e.g. -x -q)
#   bash scripts/test.sh ARGS            pytest ARGS on the locked versions only (e.g. tests/training -k packed)
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=0
if [ "${1:-}" = "--fast" ]; then
  FAST=1
  shift
fi
bash scripts/setup.sh
bash scripts/install_ray.sh  # the optional Ray engine, in .venv/ray: its tests run a local Ray cluster
PKGS=()  # Debian packages some tests drive, installed only when missing
command -v chromium >/dev/null 2>&1 || PKGS+=(chromium)  # the web page test drives Chromium
command -v mpirun >/dev/null 2>&1 || PKGS+=(openmpi-bin)  # the launcher test starts a stage under Open MPI's mpirun
if [ "${#PKGS[@]}" -gt 0 ]; then
  echo "installing Debian's ${PKGS[*]} (system packages) for the tests"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >/dev/null
fi
echo "ruff: lint and format check (config in pyproject.toml)"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
export TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cpu
if [ "$FAST" = 0 ] && [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
LANES="$(mktemp -d)"
if [ "$FAST" = 1 ]; then
  # Two lanes on the machine's cores: training and inference beside everything else, no slow tests.
  .venv/bin/python -m pytest tests/training tests/inference -m "not slow" --basetemp="$LANES/a" "$@" \
    >"$LANES/a.log" 2>&1 &
  A=$!
  set +e
  .venv/bin/python -m pytest tests --ignore=tests/training --ignore=tests/inference -m "not slow" \
    --basetemp="$LANES/b" "$@"
  B=$?
  wait "$A"
  A=$?
  echo "---- training and inference (not slow), run beside the above"
  cat "$LANES/a.log"
  echo "exit codes: training and inference $A, the others $B"
  [ "$A" -eq 0 ] && [ "$B" -eq 0 ]
  exit
fi
# Two lanes on the machine's cores, about equal in time (each prints its slowest tests):
#   A: the training tests but the multi-process and stage runs, then the lowest-versions run;
#   B: everything else, with the stage, topology and DPO stage runs, then the chat CLI, the server, the web page and
#      the generation API (their clients time them: they start when lane A is nearly done, and run in one pytest so
#      that they share one trained model).
# Each lane has its own pytest temp dir; lane B's output is printed when it ends.
INTERACTIVE=(tests/inference/test_chat_cli.py tests/inference/test_serve.py tests/inference/test_web_page.py
  tests/inference/test_generate_api.py)
MOVED=(tests/training/test_preference_stage.py tests/training/test_stages.py tests/training/test_topology.py)
(
  set +e  # both pytest runs go on and record their exit codes
  .venv/bin/python -m pytest tests "${MOVED[@]}" --ignore=tests/training "${INTERACTIVE[@]/#/--ignore=}" \
    --durations=12 --basetemp="$LANES/rest"
  echo $? >"$LANES/rest.rc"
  echo "---- the chat CLI, the server, the web page and the generation API (their clients time them)"
  .venv/bin/python -m pytest "${INTERACTIVE[@]}" --durations=8 --basetemp="$LANES/interactive"
  echo $? >"$LANES/interactive.rc"
) >"$LANES/rest.log" 2>&1 &
REST=$!
set +e
.venv/bin/python -m pytest tests/training "${MOVED[@]/#/--ignore=}" --durations=12 --basetemp="$LANES/training"
TRAINING=$?
LOWEST=0
if [ "$TRAINING" -eq 0 ]; then
  bash scripts/lowest_versions.sh
  # what depends on transformers' internals: attention masks, the loss, memory, export and ZeRO-3 loading, the
  # generation API, the KV cache and the batching engine
  echo "training and inference tests with transformers 5.17 (the lowest we claim), beside the locked set"
  PYTHONPATH=.venv/lowest .venv/bin/python -c \
    "import sys, transformers as t; print('transformers', t.__version__); sys.exit(t.__version__ != '5.17.0')" &&
    PYTHONPATH=.venv/lowest .venv/bin/python -m pytest -m "not slow or lowest" -p no:cacheprovider \
      --basetemp="$LANES/lowest" tests/training/test_packing_attention.py tests/training/test_memory.py \
      tests/training/test_loss.py tests/training/test_export.py tests/training/test_stages.py \
      tests/inference/test_generate_api.py tests/inference/test_kv_cache.py \
      tests/inference/test_sampling_and_loading.py tests/inference/test_engine.py
  LOWEST=$?
fi
wait "$REST"
OTHERS=$(cat "$LANES/rest.rc" 2>/dev/null || echo 1)
ALONE=$(cat "$LANES/interactive.rc" 2>/dev/null || echo 1)
echo "---- the other tests (data_prep, tokenization_prep, inference, demo, benchmarks, the stage, topology and DPO"\
  "stage runs), then the chat CLI, server, web page and generation API tests, run beside the above"
cat "$LANES/rest.log"
echo "exit codes: training $TRAINING, lowest transformers $LOWEST, others $OTHERS, interactive $ALONE"
[ "$TRAINING" -eq 0 ] && [ "$LOWEST" -eq 0 ] && [ "$OTHERS" -eq 0 ] && [ "$ALONE" -eq 0 ]

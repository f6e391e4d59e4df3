#!/usr/bin/env bash
# One command that proves the training stage on a bare CUDA machine (torch + transformers, no DeepSpeed, no
# network), in under 8 minutes on one H200:
#   1. env      python, torch, CUDA, GPU, transformers; refuses without a CUDA GPU
#   2. install  offline, from the wheelhouse (benchmarks/build_wheelhouse.sh), only the packages that do not import
#               (deepspeed, pydantic, orjson...); torch, transformers, tokenizers, numpy pinned as found; the
#               project itself through PYTHONPATH; then every module the training stage imports, imported
#   3. ops      FusedAdam JIT-built when nvcc is there (else, or if that fails: torch's AdamW via "torch_adam")
#   4. bench    benchmarks/bench_gpu_training.py: Pythia-410M shape (hidden 1024, 24 layers, 16 heads), packed 2048,
#               bf16, ZeRO-2 and ZeRO-3, per attention implementation (sdpa, eager, flex_attention, and
#               flash_attention_2 when installed): packed-equals-alone on CUDA first, then step time, tokens/s,
#               peak memory and MFU; the runs stop starting once the time budget is spent
# Each phase prints a "budget:" line. Written under --output_path (default $OUT, which the device tool brings back):
# gpu_check.log (everything printed), results.json, runs.tar.gz (each run's log, metrics and DeepSpeed config).
# --install_only: phases 1-2 only (no GPU needed): prepare or check an environment.
# Exit: 0 passed; 1 a run or check failed; 2 bad arguments; 3 passed but the budget cut runs; 4 install failed;
# 5 no CUDA GPU.
#
#   bash benchmarks/gpu_check.sh [--output_path DIR] [--work DIR] [--wheelhouse DIR] [--steps 12] [--warmup 4]
#        [--configs zero2,zero3] [--attn sdpa,eager,flex_attention] [--adam auto|fused|torch] [--budget_s 420]
#   bash benchmarks/gpu_check.sh --tiny --output_path DIR    # the CPU path (this checkout's .venv, no install), ~1.5 min
#   PYTHON=python3 bash benchmarks/gpu_check.sh --install_only --output_path DIR
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TINY=0 INSTALL_ONLY=0 OUT_DIR="${OUT:-}" WORK="" WH="$ROOT/benchmarks/.wheelhouse"
STEPS="" WARMUP="" CONFIGS="zero2,zero3" ATTN="" ADAM=auto BUDGET=420
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tiny) TINY=1; shift ;;
        --install_only) INSTALL_ONLY=1; shift ;;
        --output_path|--work|--wheelhouse|--steps|--warmup|--configs|--attn|--adam|--budget_s)
            [[ $# -ge 2 ]] || { echo "gpu_check.sh: $1 needs a value" >&2; exit 2; }
            case "$1" in
                --output_path) OUT_DIR="$2" ;; --work) WORK="$2" ;; --wheelhouse) WH="$2" ;; --steps) STEPS="$2" ;;
                --warmup) WARMUP="$2" ;; --configs) CONFIGS="$2" ;; --attn) ATTN="$2" ;; --adam) ADAM="$2" ;;
                --budget_s) BUDGET="$2" ;;
            esac
            shift 2 ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ -n "$OUT_DIR" ]] || { echo "gpu_check.sh: give --output_path DIR (or set OUT)" >&2; exit 2; }
mkdir -p "$OUT_DIR" && OUT_DIR="$(cd "$OUT_DIR" && pwd)"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1  # the whole log comes back with the results
TEE_PID=$!
trap 'exec 1>&- 2>&-; wait "$TEE_PID" 2>/dev/null' EXIT  # let tee write the last lines before this script ends
cd "$ROOT" || exit 2

T0=$SECONDS
T_PHASE=$SECONDS
budget() { echo "budget: $1 $((SECONDS - T_PHASE)) s (total $((SECONDS - T0)) s)"; T_PHASE=$SECONDS; }

export PYTHONUNBUFFERED=1 DS_BUILD_OPS=0 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the project itself, no build step
if [[ $TINY == 1 ]]; then
    PY="$ROOT/.venv/bin/python"
    WORK="${WORK:-${TMPDIR:-/tmp}/gpu_check_tiny}"
    export DS_ACCELERATOR=cpu  # PATH as given: the tests' ninja builds DeepSpeed's CPU comm op (another rebuilds it)
else
    PY="${PYTHON:-python3}"
    WORK="${WORK:-${TMPDIR:-/tmp}/gpu_check}"
    export DS_ACCELERATOR=cuda
fi
mkdir -p "$WORK" && WORK="$(cd "$WORK" && pwd)"
[[ $TINY == 1 ]] || export TORCH_EXTENSIONS_DIR="$WORK/torch_extensions"  # JIT-built ops: built once, every run

# ---- 1. env
echo "gpu_check: $([[ $TINY == 1 ]] && echo "--tiny (CPU)" || echo GPU) in $ROOT, work $WORK, out $OUT_DIR"
"$PY" - "$((TINY || INSTALL_ONLY))" <<'EOF' || exit 5
import platform, sys
import torch, transformers
no_gpu_needed = sys.argv[1] == "1"
print(f"python {platform.python_version()} ({sys.executable}); torch {torch.__version__} (CUDA {torch.version.cuda});"
      f" transformers {transformers.__version__}")
if not (3, 10) <= sys.version_info[:2] <= (3, 13):
    print(f"warning: the wheelhouse has compiled wheels for CPython 3.10-3.13 only, not {platform.python_version()}")
if torch.cuda.is_available() or not no_gpu_needed:
    if not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU (torch.cuda.is_available() is False); use --tiny on a CPU")
    p = torch.cuda.get_device_properties(0)
    print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"{torch.cuda.device_count()} device(s)")
EOF
if [[ $TINY == 0 && $INSTALL_ONLY == 0 ]]; then
    CAP=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
    export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$CAP}"  # JIT ops for this GPU only: a shorter build
fi
budget env

# ---- 2. install (GPU only: --tiny uses the .venv as it is), then the import check
NEEDED="deepspeed:deepspeed hjson:hjson pydantic:pydantic pydantic-core:pydantic_core annotated-types:annotated_types
typing-inspection:typing_inspection orjson:orjson msgpack:msgpack ninja:ninja psutil:psutil py-cpuinfo:cpuinfo
einops:einops pyyaml:yaml peft:peft safetensors:safetensors h5py:h5py tensorboard:tensorboard tqdm:tqdm"
if [[ $TINY == 0 ]]; then
    MISSING=$("$PY" - $NEEDED <<'EOF'
import importlib.util, sys
print(" ".join(d for d, m in (a.split(":") for a in sys.argv[1:]) if importlib.util.find_spec(m) is None))
EOF
)
    echo "not importable here: ${MISSING:-nothing}"
    if [[ -n "$MISSING" ]]; then
        if [[ ! -d "$WH" ]]; then
            echo "gpu_check: no wheelhouse at $WH: run benchmarks/build_wheelhouse.sh here and carry it" >&2
            exit 4
        fi
        # what the image has stays: pin it, so a dependency can never upgrade torch or transformers
        "$PY" - > "$WORK/constraints.txt" <<'EOF'
import importlib.metadata as m
for d in ("torch", "transformers", "tokenizers", "numpy", "triton", "huggingface-hub", "accelerate"):
    try:
        print(f"{d}=={m.version(d)}")
    except m.PackageNotFoundError:
        pass
EOF
        PIP=("$PY" -m pip install -q --no-index --find-links "$WH" --disable-pip-version-check
             --no-warn-script-location)
        # shellcheck disable=SC2086
        if ! PIP_ROOT_USER_ACTION=ignore "${PIP[@]}" -c "$WORK/constraints.txt" $MISSING; then
            echo "pip could not install into $("$PY" -c 'import sys; print(sys.prefix)'); trying $WORK/site instead"
            # shellcheck disable=SC2086
            "${PIP[@]}" --no-deps --target "$WORK/site" $MISSING typing-extensions || exit 4
            export PYTHONPATH="$WORK/site:$PYTHONPATH"
        fi
    fi
fi
"$PY" - <<'EOF' || { echo "gpu_check: the training stage's imports fail (above)" >&2; exit 4; }
import importlib.metadata as m
import deepspeed, h5py, orjson, peft, pydantic, safetensors, yaml  # noqa: F401
import torch.utils.tensorboard  # noqa: F401 (the trainer's SummaryWriter)
import data_prep.jobs, tokenization_prep.pipeline, training.run, training.trainer  # noqa: F401
print("imports ok: " + ", ".join(f"{d} {m.version(d)}" for d in ("deepspeed", "pydantic", "orjson", "peft", "h5py")))
EOF
budget install
[[ $INSTALL_ONLY == 1 ]] && { echo "gpu_check: installed (--install_only)"; exit 0; }

# ---- 3. ops: FusedAdam needs nvcc; DeepSpeed builds nothing else for ZeRO-2/3 on one GPU
if [[ $TINY == 1 ]]; then
    ADAM=torch
elif [[ $ADAM == auto ]]; then
    NVCC=$("$PY" -c 'import os; from torch.utils.cpp_extension import CUDA_HOME as h
n = h and os.path.join(h, "bin", "nvcc"); print(n if n and os.path.isfile(n) else "")')
    if [[ -z "$NVCC" ]]; then
        echo "no nvcc (torch's CUDA_HOME: none): DeepSpeed's FusedAdam cannot be built; training with torch_adam"
        ADAM=torch
    elif timeout 300 "$PY" -c 'from deepspeed.accelerator import get_accelerator as a
a().create_op_builder("FusedAdamBuilder").load()' > "$WORK/fused_adam_build.log" 2>&1; then
        echo "FusedAdam built with $NVCC (arch $TORCH_CUDA_ARCH_LIST)"
        ADAM=fused
    else
        echo "FusedAdam did not build with $NVCC (last lines below); training with torch_adam"
        tail -5 "$WORK/fused_adam_build.log"
        ADAM=torch
    fi
fi
budget "ops ($ADAM adam)"

# ---- 4. bench
if [[ $TINY == 1 ]]; then
    # trains sdpa only (each CPU run costs ~10 s), checks sdpa and eager; a nominal 1 TFLOPS "peak" exercises the
    # MFU path (the number means nothing on a CPU)
    ARGS=(--tiny --kinds pythia --configs "$CONFIGS" --attn "${ATTN:-sdpa}" --check_attn "${ATTN:-sdpa,eager}"
          --steps "${STEPS:-3}" --warmup "${WARMUP:-1}" --peak_tflops 1)
else
    if [[ -z "$ATTN" ]]; then
        ATTN=sdpa,eager,flex_attention
        "$PY" -c 'from transformers.utils import is_flash_attn_2_available as a; raise SystemExit(not a())' \
            && ATTN="$ATTN,flash_attention_2"
    fi
    ARGS=(--kinds pythia --configs "$CONFIGS" --attn "$ATTN" --steps "${STEPS:-12}" --warmup "${WARMUP:-4}"
          --micro_batch_size 4 --launcher python)
fi
LEFT=$((BUDGET - (SECONDS - T0)))
"$PY" benchmarks/bench_gpu_training.py "${ARGS[@]}" --adam "$ADAM" --work "$WORK" --results "$OUT_DIR/results.json" \
    --budget_s "$((LEFT > 0 ? LEFT : 1))"
RC=$?
budget bench
(cd "$WORK" && tar czf "$OUT_DIR/runs.tar.gz" --ignore-failed-read runs/*.log runs/*/logs/metrics.jsonl ds \
    fused_adam_build.log 2>/dev/null)
case $RC in
    0) echo "gpu_check: PASSED in $((SECONDS - T0)) s" ;;
    3) echo "gpu_check: INCOMPLETE in $((SECONDS - T0)) s: the time budget cut runs (results.json: skipped)" ;;
    *) echo "gpu_check: FAILED (bench exit $RC) in $((SECONDS - T0)) s" ;;
esac
exit $RC

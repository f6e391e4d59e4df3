#!/usr/bin/env bash
# Build benchmarks/.wheelhouse: the wheels benchmarks/gpu_check.sh installs offline on a bare CUDA machine.
#
# Why: the GPU machine has torch and transformers but no DeepSpeed and no network; only files carried from here
# reach it (64 MiB with the repo). This folder holds what the training stage imports that such an image may lack,
# at the versions of this checkout's .venv (the ones the tests ran with):
#   - deepspeed, built here as a py3-none-any wheel (PyPI has the source only; no op is prebuilt: DS_BUILD_OPS=0,
#     so FusedAdam JIT-compiles there, or gpu_check.sh switches to torch's AdamW when there is no nvcc);
#   - deepspeed's and the project's other pure-Python needs (pydantic and its deps, hjson, peft...), one wheel each;
#   - the compiled ones (pydantic-core, orjson, msgpack, pyyaml) once per CPython 3.10..3.13, manylinux x86_64;
#     ninja, psutil and safetensors have one wheel for every Python.
# gpu_check.sh installs only what does not import there; the image's package list (device KINDS.md, 2026-11-17)
# has no deepspeed, hjson, pydantic (+ pydantic-core...) or orjson. Left out on purpose (the GPU image
# has them, and they are large or must match its CUDA): torch, transformers, tokenizers, numpy, huggingface_hub,
# accelerate, tqdm, jinja2, packaging, filelock, fsspec, requests, h5py (~5 MB a Python), tensorboard (+ grpcio,
# protobuf). --with-h5py adds h5py. About 19 MB: the repo's ~19 MB plus this stays far below the 64 MiB carry.
#
#   bash benchmarks/build_wheelhouse.sh [--dir benchmarks/.wheelhouse] [--with-h5py]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/benchmarks/.wheelhouse"
WITH_H5PY=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) DIR="$(realpath -m "$2")"; shift 2 ;;
        --with-h5py) WITH_H5PY=1; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "build_wheelhouse.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || { echo "build_wheelhouse.sh: no $PY; create the venv first (pipenv sync --dev)" >&2; exit 2; }
"$PY" -m pip --version

# the .venv's version of a distribution: the wheelhouse carries exactly what the tests here ran with
ver() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

# this machine's pip config names local indexes that lack most projects: their "is ignored" warnings are noise
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

PURE=(hjson py-cpuinfo einops pydantic annotated-types typing-inspection typing-extensions peft)
BINARY=(pydantic-core orjson msgpack pyyaml)  # one wheel per CPython minor version
ONE_BINARY=(ninja psutil safetensors)  # py3-none-manylinux / abi3: one wheel serves every Python
[[ $WITH_H5PY == 1 ]] && BINARY+=(h5py)

mkdir -p "$DIR"
rm -f "$DIR"/*.whl
export DS_BUILD_OPS=0  # a pure-Python deepspeed wheel; ops are JIT-built where they run
t0=$SECONDS
quiet "$PY" -m pip wheel --no-deps -q -w "$DIR" "deepspeed==$(ver deepspeed)"
echo "deepspeed wheel built in $((SECONDS - t0)) s"

PLAT=(--platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64)
pins() { for p in "$@"; do echo "$p==$(ver "$p")"; done; }
# --only-binary with --platform/--python-version fetches wheels for that target, never this machine's
quiet "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$DIR" $(pins "${PURE[@]}")
quiet "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d "$DIR" $(pins "${ONE_BINARY[@]}")
for v in 3.10 3.11 3.12 3.13; do
    quiet "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$v" --implementation cp \
        "${PLAT[@]}" -d "$DIR" $(pins "${BINARY[@]}")
done
if ls "$DIR" | grep -qiE '^(torch|transformers|nvidia)'; then
    echo "build_wheelhouse.sh: a torch/transformers/nvidia wheel got in: refusing (the GPU image's own must stay)" >&2
    exit 1
fi
ls -1 "$DIR"
echo "wheelhouse $DIR: $(ls "$DIR" | wc -l) wheels, $(du -sb "$DIR" | cut -f1) bytes ($(du -sh "$DIR" | cut -f1))"

"""Differential check against generative_data_prep itself: same input and flags through gdp and through us,
then every HDF5 dataset compared element for element, metadata.yaml key for key (gdp's keys), and the
test_files/ and splits/ line files byte for byte. gdp runs from its own venv (never the project's lock):

    bash benchmarks/setup_gdp_venv.sh /path/to/generative_data_prep   # makes benchmarks/.gdp_venv
    .venv/bin/python benchmarks/gdp_diff.py --pretrained_tokenizer DIR [--input_path FILE] [--lines 3000] \
        [--work /tmp/gdp_diff] [--num_workers 2]

``--pretrained_tokenizer`` must be a directory both tools load: a saved tokenizer with a ``config.json`` (gdp reads the
model config from it); the chat-template cases need a ``chat_template`` in its ``tokenizer_config.json``
(they are skipped otherwise). Prints one line per case (PASS or what differs) and exits 1 if any case differs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import yaml

from data_prep.jobs import prepare_oa_dolly

ROOT = Path(__file__).resolve().parents[1]
GDP_KEYS = (
    "max_seq_length",
    "token_type_ids",
    "vocab_size",
    "tokenizer_model_type",
    "number_of_training_files",
    "number_of_dev_files",
    "number_of_test_files",
    "max_batch_size_train",
    "max_batch_size_dev",
)

CASES = {  # name -> pipeline flags (all with --shuffle False: gdp's only deterministic mode)
    "issue: 4 splits, ratios 0.1/0.05": "--num_training_splits 4 --dev_ratio 0.1 --test_ratio 0.05 "
    "--input_packing_config greedy::drop",
    "ratios giving dev+test files": "--num_training_splits 8 --dev_ratio 0.2 --test_ratio 0.1 "
    "--input_packing_config greedy::drop --keep_split_jsonls",
    "explicit counts, unbalanced": "--num_training_splits 5 --num_dev_splits 2 --num_test_splits 1 "
    "--do_not_balance_hdf5 --input_packing_config single::truncate_right",
    "full packing, default splits": "--input_packing_config full",
    "single::drop": "--num_training_splits 3 --input_packing_config single::drop",
    "greedy::truncate_left, pair boundaries": "--num_training_splits 3 --input_packing_config greedy::truncate_left "
    "--packing_boundary prompt_completion_pair "
    "--attention_boundary prompt_completion_pair",
    "prefix/postfix, no space separator": "--num_training_splits 3 --input_packing_config greedy::drop "
    "--prompt_prefix '[P] ' --prompt_postfix ' [/P]' --disable_space_separator",
    "chat template (tokenizer's own)": "--num_training_splits 3 --input_packing_config greedy::drop "
    "--apply_chat_template",
    "chat template, pair boundaries": "--num_training_splits 2 --input_packing_config single::truncate_right "
    "--apply_chat_template --packing_boundary prompt_completion_pair "
    "--attention_boundary prompt_completion_pair --prompt_prefix '>> '",
    "keep prompt-only, special tokens": "--num_training_splits 2 --input_packing_config single::truncate_left "
    "--keep_prompt_only_sequences "
    '--special_tokens_dict \'{"pad_token": "<pad>"}\'',
}


def _tokenizer_config(path: str) -> dict:
    p = Path(path) / "tokenizer_config.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def compare(ours: Path, gdp: Path) -> list[str]:
    diffs = []
    fa, fb = sorted(p.name for p in ours.glob("*.hdf5")), sorted(p.name for p in gdp.glob("*.hdf5"))
    if fa != fb:
        diffs.append(f"HDF5 files differ: ours {fa}, gdp {fb}")
    for name in sorted(set(fa) & set(fb)):
        with h5py.File(ours / name) as a, h5py.File(gdp / name) as b:
            if set(a) - {"provenance"} != set(b):  # ours adds the provenance group beside gdp's datasets
                diffs.append(f"{name}: datasets {sorted(a)} vs {sorted(b)}")
            for key in sorted(set(a) & set(b)):
                if a[key].shape != b[key].shape or not np.array_equal(a[key][:], b[key][:]):
                    diffs.append(f"{name}/{key}: {a[key].shape} vs {b[key].shape}, values differ")
    ma, mb = (yaml.safe_load((d / "metadata.yaml").read_text()) for d in (ours, gdp))
    for key in sorted(k for k in mb if k in GDP_KEYS or k.startswith(("train_", "dev_"))):
        if ma.get(key) != mb[key]:
            diffs.append(f"metadata {key}: ours {ma.get(key)!r}, gdp {mb[key]!r}")
    for sub in ("test_files", "splits"):
        sa = sorted(p.name for p in (ours / sub).glob("*")) if (ours / sub).is_dir() else []
        sb = sorted(p.name for p in (gdp / sub).glob("*")) if (gdp / sub).is_dir() else []
        if sa != sb:
            diffs.append(f"{sub}/: ours {sa}, gdp {sb}")
        diffs += [
            f"{sub}/{n}: bytes differ"
            for n in sa
            if n in sb and (ours / sub / n).read_bytes() != (gdp / sub / n).read_bytes()
        ]
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pretrained_tokenizer", required=True, help="a saved tokenizer dir with a config.json")
    ap.add_argument(
        "--input_path", type=Path, default=None, help="default: the first --lines of the bundled Dolly+OASST"
    )
    ap.add_argument("--lines", type=int, default=3000)
    ap.add_argument("--max_seq_length", type=int, default=1024)
    ap.add_argument("--gdp_python", default=str(ROOT / "benchmarks/.gdp_venv/bin/python"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/gdp_diff"))
    ap.add_argument("--only", default=None, help="run the cases whose name contains this")
    ap.add_argument("--num_workers", type=int, default=2, help="our worker processes (the output is the same for any)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    src = args.input_path
    if src is None:
        chat = args.work / "oasst1_dolly.jsonl"
        if not chat.exists():
            prepare_oa_dolly(
                chat,
                str(ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz"),
                str(ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl"),
            )
        src = args.work / f"input_{args.lines}.jsonl"
        with open(chat, "rb") as fh, open(src, "wb") as out:
            for _, line in zip(range(args.lines), fh):
                out.write(line)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    failed = 0
    for name, flags in CASES.items():
        if args.only and args.only not in name:
            continue
        if "chat template" in name and "chat_template" not in _tokenizer_config(args.pretrained_tokenizer):
            print(f"SKIP {name}: {args.pretrained_tokenizer}/tokenizer_config.json has no chat_template")
            continue
        common = (
            f"pipeline --input_path {src} --pretrained_tokenizer {args.pretrained_tokenizer} --max_seq_length "
            f"{args.max_seq_length} --shuffle False --overwrite_output_path {flags}"
        )
        outs = {}
        # ours without the dev-leakage check (gdp has none: it would move dev lines that copy training lines)
        ours = f"--dev_leakage off --num_workers {args.num_workers}"
        for tool, py, mod, own in (
            ("ours", sys.executable, "tokenization_prep", ours),
            ("gdp", args.gdp_python, "generative_data_prep", ""),
        ):
            out = args.work / f"{tool}_{abs(hash(name)) % 10**8}"
            shutil.rmtree(out, ignore_errors=True)
            r = subprocess.run(
                f"{py} -m {mod} {common} {own} --output_path {out}",
                shell=True,
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                outs[tool] = (r.stderr.strip().splitlines() or ["?"])[-1]
            else:
                outs[tool] = out
        if any(isinstance(v, str) for v in outs.values()):
            print(f"ERROR {name}: ours: {outs['ours']}  gdp: {outs['gdp']}")
            failed += 1
            continue
        diffs = compare(outs["ours"], outs["gdp"])
        failed += bool(diffs)
        print(f"{'PASS' if not diffs else 'DIFF'} {name}" + "".join(f"\n    {d}" for d in diffs[:8]))
    print(f"{len(CASES) if not args.only else 'selected'} cases, {failed} differ")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

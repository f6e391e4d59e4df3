"""The main job on the bundled real data, end to end, with finished steps skipped on rerun.

data_prep (Dolly+OASST, OIG) -> tokenization of both (Dolly+OASST with a dev split) -> stage 1 on OIG -> stage 2
on Dolly+OASST (tiny Pythia-shaped model, real Pythia tokenizer) -> preference pairs from OASST1's ranked replies,
tokenized with stage 2's dev trees as their dev split -> stage 3 (DPO) from stage 2 -> evaluation of the untrained
model and the three stages on the dev splits (dev loss, stop rates, dev-pair reward accuracy and margin per source)
-> one chat reply from the final model. A step is
skipped only when its stamp file records the sha256 of its inputs (the pipeline's code among them) and outputs and
they all match; a changed input or a damaged output reruns it (and the steps after it, whose inputs then change).

    .venv/bin/python scripts/demo.py [--quick]     (bash scripts/demo.sh sets up the venv first)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.errors import DataError
from common.files import sha256_file
from tokenization_prep.schema import load_tokenized_dir

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
STAMPS = ROOT / "demo_out" / "stamps"
TOKENIZER = "data/tokenizers/gpt-neox-20b"
CHAT_MESSAGE = "What is the capital of France?"


def digest(path: Path) -> str:
    """sha256 of a file, or of a directory's manifest.sha256 / file list (sorted names and contents)."""
    path = ROOT / path
    if path.is_file():
        return sha256_file(path)
    if (path / "manifest.sha256").is_file():
        return sha256_file(path / "manifest.sha256")
    if path.is_dir():
        h = hashlib.sha256()
        for p in sorted(q for q in path.rglob("*") if q.is_file()):
            h.update(str(p.relative_to(path)).encode() + bytes.fromhex(sha256_file(p)))
        return h.hexdigest()
    return "missing"


def outputs_intact(outputs: list[str]) -> bool:
    """Outputs exist; a tokenization dir also still passes its verifier (manifest, metadata, every file)."""
    for out in outputs:
        p = ROOT / out
        if not p.exists():
            return False
        if p.is_dir() and (p / "manifest.sha256").exists():
            try:
                load_tokenized_dir(p, full=True)
            except DataError:
                return False
    return True


def code_digest() -> str:
    """sha256 of the pipeline's code (every stage's .py and .sh files): code is an input of every step too."""
    h = hashlib.sha256()
    for pkg in ("common", "data_prep", "tokenization_prep", "training", "inference"):
        for p in sorted((ROOT / pkg).rglob("*")):
            if p.suffix in (".py", ".sh") and p.is_file():
                h.update(str(p.relative_to(ROOT)).encode() + bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


CODE = code_digest()


def step(name: str, cmd: list[str], inputs: list[str], outputs: list[str], extra_key: str = "") -> None:
    """Run ``cmd`` unless the stamp of ``name`` matches current input and output hashes."""
    stamp = STAMPS / f"{name}.json"
    key = {"cmd": cmd, "extra": extra_key, "code": CODE, "inputs": {i: digest(Path(i)) for i in inputs}}
    if stamp.is_file() and outputs_intact(outputs):
        old = json.loads(stamp.read_text())
        if old["key"] == key and old["outputs"] == {o: digest(Path(o)) for o in outputs}:
            print(f"== {name}: up to date (inputs and outputs match their hashes), skipped")
            return
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    t0 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    STAMPS.mkdir(parents=True, exist_ok=True)
    stamp.write_text(
        json.dumps(
            {"key": key, "outputs": {o: digest(Path(o)) for o in outputs}, "seconds": round(time.time() - t0, 1)},
            indent=1,
        )
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 training steps per stage (the CI smoke test)")
    args = ap.parse_args()
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    steps = ["--max_steps", "2", "--eval_rows", "8"] if args.quick else []  # quick: 2 steps, 8 dev rows (pairs)
    t0 = time.time()
    oa, ock = "data_prep/oasst1_dolly.jsonl", "data_prep/bloom_ock_100K_each.jsonl"
    step(
        "data_prep_oa_dolly",
        [
            PY,
            "-m",
            "data_prep",
            "prepare_oa_dolly",
            "--overwrite_output_path",
            "--dolly",
            "data/samples/dolly/databricks-dolly-15k.jsonl.gz",
            "--oasst",
            "data/samples/oasst1/oasst1_validation_en.jsonl",
            "--output_path",
            oa,
        ],
        ["data/samples/dolly/databricks-dolly-15k.jsonl.gz", "data/samples/oasst1/oasst1_validation_en.jsonl"],
        [oa],
    )
    step(
        "data_prep_oig",
        [
            *(PY, "-m", "data_prep", "subsample_openchatkit", "--overwrite_output_path"),
            *("--oig", "data/samples/oig", "--output_path", ock),
        ],
        ["data/samples/oig"],
        [ock],
    )
    tok_oa, tok_ock = "tokenization_prep/oasst1_dolly_out", "tokenization_prep/bloom_ock_100k_out"
    # Dolly+OASST gets a dev split (BLOOMChat used none): 0.12 gives one dev file beside the 8 training files
    # BLOOMChat's tokenization recipes (tokenization_prep/configs/), with this machine's tokenizer, inputs and outputs
    for name, src, out, recipe, extra in (
        ("tokenize_oa_dolly", oa, tok_oa, "bloomchat_oa_dolly.yaml", ["--dev_ratio", "0.12"]),
        ("tokenize_oig", ock, tok_ock, "bloomchat_openchatkit.yaml", []),
    ):
        recipe = f"tokenization_prep/configs/{recipe}"
        step(
            name,
            [
                *(PY, "-m", "tokenization_prep", "pipeline", "--config", recipe, "--pretrained_tokenizer", TOKENIZER),
                *("--input_path", src, "--output_path", out, "--overwrite_output_path", *extra),
            ],
            [src, f"{src}.data_card.json", f"{TOKENIZER}/tokenizer.json", recipe],
            [out],
        )
    s1, s2 = "training/ckpt/stage1_oig/final", "training/ckpt/stage2_oa_dolly/final"
    step(
        "train_stage1_oig",
        [
            PY,
            "-m",
            "training",
            "run",
            "--overwrite_output_path",
            "--config",
            "training/configs/demo/stage1_oig.yaml",
            *steps,
        ],
        [tok_ock, "training/configs/demo/stage1_oig.yaml"],
        [s1],
    )
    step(
        "train_stage2_oa_dolly",
        [
            *(PY, "-m", "training", "run", "--overwrite_output_path"),
            *("--config", "training/configs/demo/stage2_oa_dolly.yaml", *steps),
        ],
        [tok_oa, s1, "training/configs/demo/stage2_oa_dolly.yaml"],
        [s2],
    )
    prefs, tok_prefs = "data_prep/oasst1_preferences.jsonl", "tokenization_prep/oasst1_preferences_out"
    step(
        "data_prep_preferences",
        [
            *(PY, "-m", "data_prep", "prepare_preferences", "--overwrite_output_path"),
            *("--oasst", "data/samples/oasst1/oasst1_validation_en.jsonl", "--output_path", prefs),
        ],
        ["data/samples/oasst1/oasst1_validation_en.jsonl"],
        [prefs],
    )
    step(  # a tree is wholly in train or dev: the dev pairs are the OASST trees of stage 2's dev split
        "tokenize_preferences",
        [
            *(PY, "-m", "tokenization_prep", "pipeline", "--pretrained_tokenizer", TOKENIZER),
            *("--max_seq_length", "2048"),
            *("--input_path", prefs, "--output_path", tok_prefs, "--overwrite_output_path"),
            *("--dev_trees_from", tok_oa),
        ],
        [prefs, tok_oa, f"{TOKENIZER}/tokenizer.json"],
        [tok_prefs],
    )
    s3 = "training/ckpt/stage3_dpo/final"
    step(
        "train_stage3_dpo",
        [
            *(PY, "-m", "training", "run", "--overwrite_output_path"),
            *("--config", "training/configs/demo/stage3_dpo.yaml", *steps),
        ],
        [tok_prefs, s2, "training/configs/demo/stage3_dpo.yaml"],
        [s3],
    )
    evaluation = "training/ckpt/evaluation.json"
    step(
        "evaluate",
        [
            PY,
            "-m",
            "training",
            "evaluate",
            "--untrained",
            "training/configs/demo/stage1_oig.yaml",
            "--model",
            s1,
            "--model",
            s2,
            "--model",
            s3,
            "--data",
            tok_oa,
            # stage 3's dev pairs (the OASST trees of stage 2's dev split), rewards relative to stage 2, its reference
            *("--preference_data", tok_prefs, "--reference", s2),
            "--prompts",
            "8",
            "--max_new_tokens",
            "48",
            "--output_path",
            evaluation,
            *(["--dev_rows", "4", "--dev_pairs", "8", "--prompts", "1"] if args.quick else []),
        ],
        [tok_oa, tok_prefs, s1, s2, s3, "training/configs/demo/stage1_oig.yaml"],
        [evaluation],
    )
    curves = "training/ckpt/loss_curves.png"
    subprocess.run(
        [
            *(PY, "-m", "training", "plot_losses", "--output_path", curves),
            *("training/ckpt/stage1_oig", "training/ckpt/stage2_oa_dolly", "training/ckpt/stage3_dpo"),
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    print(f"== chat: one reply from {s3}", flush=True)
    subprocess.run(
        [
            PY,
            "-m",
            "inference",
            "chat",
            "--model",
            s3,
            "--greedy",
            "--verbose",
            "--max_new_tokens",
            "48",
            "--message",
            CHAT_MESSAGE,
        ],
        cwd=ROOT,
        check=True,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"},
    )
    summary(t0, [tok_oa, tok_ock, tok_prefs], curves, evaluation)
    return 0


def card_summary(outputs: list[str], model: str) -> None:
    """Each data_prep output's data card (licenses, what each filter dropped, languages) and the final model's
    licenses, as its lineage.json carries them."""
    from common.data_card import card_lines

    for out in outputs:
        card = json.loads((ROOT / f"{out}.data_card.json").read_text())
        print(f"\ndata card of {out} (also {out}.DATA_CARD.md):")
        print("\n".join(card_lines(card)))
    lineage = json.loads((ROOT / model / "lineage.json").read_text())
    print(f"\n{model} was trained on data under: {', '.join(lineage.get('data_licenses') or ['(unknown)'])}")


def summary(t0: float, tok_dirs: list[str], curves: str, evaluation: str) -> None:
    print("\n== summary", flush=True)
    for label, path in (
        ("Dolly+OASST chat JSONL", "data_prep/oasst1_dolly.jsonl"),
        ("OIG chat JSONL", "data_prep/bloom_ock_100K_each.jsonl"),
        ("record counts", "data_prep/*.summary.json, rejects in data_prep/*.rejects.jsonl"),
        ("data cards", "data_prep/*.DATA_CARD.md, data_card.json (and in each HDF5 dir, each model's lineage)"),
        ("Dolly+OASST HDF5 splits", tok_dirs[0]),
        ("OIG HDF5 splits", tok_dirs[1]),
        ("preference pairs JSONL", "data_prep/oasst1_preferences.jsonl"),
        ("preference HDF5 splits", tok_dirs[2]),
        ("stage 1 model", "training/ckpt/stage1_oig/final"),
        ("stage 2 model", "training/ckpt/stage2_oa_dolly/final"),
        ("stage 3 model (DPO)", "training/ckpt/stage3_dpo/final"),
        ("TensorBoard logs", "training/ckpt/*/logs"),
        ("loss curves", curves),
        ("evaluation", evaluation),
    ):
        print(f"  {label:<24} {path}")
    for d in tok_dirs:
        pairs = (ROOT / d / "pair_lengths.png").is_file()  # a preference dir: rows are pairs
        pngs = "pair_lengths.png" if pairs else "article_lengths.png, sequence_fill.png"
        print(f"\ndata report of {d} (also data_report.md, {pngs} there):")
        report = (ROOT / d / "data_report.md").read_text().split("\n", 2)[2]
        lost = sum(
            len(m.get("lost_pairs" if pairs else "lost_articles", []))
            for m in json.loads((ROOT / d / "data_report.json").read_text())["splits"].values()
        )
        marker = "Truncated and dropped pairs:" if pairs else "Dropped and truncated articles:"
        print(report.split(marker)[0].rstrip())
        what = "pairs" if pairs else "articles"
        print(f"{lost} dropped or truncated {what}, each with its input line, in data_report.md / .json")
    card_summary(
        ["data_prep/oasst1_dolly.jsonl", "data_prep/bloom_ock_100K_each.jsonl"], "training/ckpt/stage3_dpo/final"
    )
    from training.evaluate import table  # torch loads only here, at the end (the steps run as their own processes)

    result = json.loads((ROOT / evaluation).read_text())
    print(
        f"\nwhat the models learned, on the dev split of {result['data']} (python -m training evaluate; greedy "
        f"replies to {result['prompts_per_source']} dev prompts per source, at most {result['max_new_tokens']} "
        "tokens):"
    )
    print("\n".join(table(result)))
    print(f"\ndone in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as exc:
        print(f"error: a step failed (exit {exc.returncode}): {' '.join(map(str, exc.cmd))}", file=sys.stderr)
        sys.exit(1)

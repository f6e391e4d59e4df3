"""Benchmark tokenization_prep: end-to-end tokens/s against raw ``encode_batch``, and peak RSS at 1x and 10x.

- raw: ``tokenizers`` ``encode_batch`` (both cores) on exactly the prompt/completion strings the
  pipeline encodes, in batches of 1,024 lines' strings;
- e2e: ``python -m tokenization_prep pipeline`` (JSONL in, HDF5 out, greedy::drop, 2048) on the
  bundled Dolly+OASST data_prep output, and on a 10x copy (each in a fresh process for its RSS).
Also prints the bfd::drop vs greedy::drop packing figures on the 1x input, and, when generative_data_prep's
venv exists (``bash benchmarks/setup_gdp_venv.sh GDP_CHECKOUT``), gdp itself against us side by side: same
input, same flags (``--shuffle False``, its only deterministic mode), same tokenizer files, wall time of the
whole command.
Scaling (``bench_scaling.py``): ours and gdp at ``--num_workers N`` on a 6x copy: tokens/s, speedup, the serial
share (ours' ``timing:`` line), peak RSS per process and on a 12x copy, ours byte-identical across N.

    .venv/bin/python benchmarks/bench_tokenization.py [--gdp_python benchmarks/.gdp_venv/bin/python]
    .venv/bin/python benchmarks/bench_tokenization.py --only scaling --workers 1,2,4,8,16 [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_scaling import gdp_tokenizer_dir, scaling  # sibling scripts (benchmarks/ is the script's path)
from gdp_diff import compare

from data_prep.jobs import prepare_oa_dolly
from tokenization_prep.articles import parse_line, strings_to_encode
from tokenization_prep.settings import ArticleSettings
from tokenization_prep.tokenizer_io import load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data/tokenizers/gpt-neox-20b"


def raw_rate(src: Path) -> tuple[float, int]:
    tok = load_tokenizer(str(TOKENIZER)).backend_tokenizer
    settings = ArticleSettings()
    batches, cur = [], []
    for i, raw in enumerate(src.read_bytes().splitlines()):
        cur += strings_to_encode(parse_line(raw, settings))
        if i % 1024 == 1023:
            batches.append(cur)
            cur = []
    batches.append(cur)
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        n = sum(len(e.ids) for b in batches for e in tok.encode_batch(b, add_special_tokens=True))
        best = max(best, n / (time.perf_counter() - t0))
    return best, n


def e2e(src: Path, out: Path, packing: str = "greedy::drop") -> dict:
    code = (
        "import json,resource,sys,time; sys.argv=sys.argv[:1]; from tokenization_prep.pipeline import main;"
        f"t=time.perf_counter(); rc=main(['--input_path','{src}','--output_path','{out}',"
        f"'--pretrained_tokenizer','{TOKENIZER}','--max_seq_length','2048','--input_packing_config','{packing}',"
        "'--shuffle','on_RAM','--num_training_splits','8','--overwrite_output_path']);"
        "print(json.dumps({'rc':rc,'s':time.perf_counter()-t,"
        "'rss':resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    report = json.loads((out / "data_report.json").read_text())["splits"]["train"]
    res["tokens"] = report["tokens"]
    res["sequences"] = report["sequences"]
    return res


def side_by_side(py: str, module: str, src: Path, out: Path, tokenizer: Path) -> float:
    """Wall seconds of one ``pipeline`` command (a fresh process, as a user runs it)."""
    cmd = [
        py,
        "-m",
        module,
        "pipeline",
        "--input_path",
        str(src),
        "--output_path",
        str(out),
        "--pretrained_tokenizer",
        str(tokenizer),
        "--max_seq_length",
        "2048",
        "--input_packing_config",
        "greedy::drop",
        "--shuffle",
        "False",
        "--num_training_splits",
        "8",
        "--overwrite_output_path",
    ]
    t0 = time.perf_counter()
    subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, check=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "true"}
    )
    return time.perf_counter() - t0


def vs_gdp(gdp_python: str, inputs: dict, tmp: Path) -> None:
    tok = gdp_tokenizer_dir(tmp)
    for name, src in inputs.items():
        ours = min(side_by_side(sys.executable, "tokenization_prep", src, tmp / f"ours_{name}", tok) for _ in range(2))
        gdp = min(side_by_side(gdp_python, "generative_data_prep", src, tmp / f"gdp_{name}", tok) for _ in range(2))
        diffs = compare(tmp / f"ours_{name}", tmp / f"gdp_{name}")
        print(
            f"vs gdp {name}: ours {ours:.2f} s, gdp {gdp:.2f} s -> {gdp / ours:.2f}x faster; outputs "
            f"{'identical (every HDF5 element, gdp metadata keys)' if not diffs else 'DIFFER: ' + diffs[0]}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gdp_python", default=str(ROOT / "benchmarks/.gdp_venv/bin/python"))
    ap.add_argument("--only", choices=["e2e", "scaling"], help="one section (default: both)")
    ap.add_argument("--workers", default="1,2", help="scaling: --num_workers values, e.g. 1,2,4,8,16 on 16 cores")
    ap.add_argument("--reps", type=int, default=2, help="scaling: runs per command (best kept)")
    ap.add_argument("--repeat", type=int, default=6, help="scaling: copies of the input (memory: twice that)")
    ap.add_argument("--splits", type=int, default=8, help="scaling: --num_training_splits")
    args = ap.parse_args()
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        ap.error(f"--workers {args.workers!r}: give comma-separated integers, e.g. 1,2,4")
    gdp_python = args.gdp_python if Path(args.gdp_python).exists() else None
    if not gdp_python:
        print(f"gdp comparison skipped: no {args.gdp_python} (bash benchmarks/setup_gdp_venv.sh GDP_CHECKOUT)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "oa.jsonl"
        prepare_oa_dolly(
            src,
            str(ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz"),
            str(ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl"),
        )
        if args.only != "scaling":
            e2e_section(src, tmp, gdp_python)
        if args.only != "e2e" and scaling(src, tmp, workers, args.reps, args.repeat, args.splits, gdp_python):
            sys.exit(1)


def e2e_section(src: Path, tmp: Path, gdp_python: str | None) -> None:
    """raw encode_batch, e2e at 1x and 10x, packing figures, and gdp side by side."""
    big = tmp / "oa10.jsonl"
    big.write_bytes(src.read_bytes() * 10)
    rate, n_tokens = raw_rate(src)
    one = e2e(src, tmp / "out1")
    ten = e2e(big, tmp / "out10")
    bfd = e2e(src, tmp / "bfd", "bfd::drop")
    e2e_rate = n_tokens / one["s"]
    print(f"raw encode_batch: {rate:,.0f} tokens/s ({n_tokens:,} tokens)")
    print(
        f"end to end 1x : {one['s']:.2f} s, {e2e_rate:,.0f} tokens/s, ratio {e2e_rate / rate:.2f}, "
        f"peak RSS {one['rss']:,.0f} MB"
    )
    print(
        f"end to end 10x: {ten['s']:.2f} s, {10 * n_tokens / ten['s']:,.0f} tokens/s, "
        f"peak RSS {ten['rss']:,.0f} MB ({ten['rss'] / one['rss']:.2f} x the 1x RSS)"
    )
    for name, r in (("greedy::drop", one), ("bfd::drop", bfd)):
        real = sum(v for k, v in r["tokens"].items() if k != "padding")
        lower = -(-real // 2048)
        print(
            f"{name:<13} sequences {r['sequences']:,} (ceil(tokens/2048) = {lower:,}, "
            f"x{r['sequences'] / lower:.4f}), non-padding {100 * real / (real + r['tokens']['padding']):.2f}%"
        )
    if gdp_python:
        vs_gdp(gdp_python, {"1x": src, "10x": big}, tmp)


if __name__ == "__main__":
    main()

"""Benchmark data_prep's quality pass: records/s and peak RSS with each pass and with all of them, against the same
job with the pass switched off, on the bundled data and on synthetic Dolly-format inputs of growing size.

The synthetic records are Dolly-shaped (instruction, optional context, response) word salad drawn from Dolly's own
vocabulary and length distribution with a seed, so they are distinct; 2% are planted near-duplicates of an earlier
record (two words changed), 0.5% carry an e-mail address or a phone number. 1,000 evaluation items (instructions of
synthetic records) feed ``--decontaminate``. Each case runs in a fresh process, so peak RSS is its own.

    .venv/bin/python benchmarks/bench_data_quality.py [--sizes 100000,1000000] [--cases off,full]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOLLY = ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz"
OASST = ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl"
# name -> data_prep settings; "off" also switches the whole pass off (the job as it was before the pass existed)
CASES = {
    "off": {"quality": {"pii": "off", "near_dup": False}},
    "language": {"quality": {"pii": "off", "near_dup": False}},
    "pii": {"quality": {"near_dup": False}},
    "near_dup": {"quality": {"pii": "off"}},
    "decontaminate": {"quality": {"pii": "off", "near_dup": False, "decontaminate": ["EVAL"]}},
    "full": {"quality": {"decontaminate": ["EVAL"]}},
}


def make_synthetic(path: Path, eval_path: Path, n: int, seed: int = 0) -> None:
    """``n`` Dolly-format records of Dolly-vocabulary word salad (see the module doc), and 1,000 eval items."""
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    words = [w for r in rows for w in (r["instruction"] + " " + r["response"]).split()]
    rng = random.Random(seed)
    made: list[dict] = []
    with path.open("w", encoding="utf-8") as out, eval_path.open("w", encoding="utf-8") as ev:
        for i in range(n):
            if made and rng.random() < 0.02:  # planted near-duplicate of an earlier record
                rec = dict(rng.choice(made))
                resp = rec["response"].split()
                for _ in range(2):
                    resp[rng.randrange(len(resp))] = rng.choice(words)
                rec["response"] = " ".join(resp)
            else:
                proto = rows[rng.randrange(len(rows))]

                def salad(text: str) -> str:
                    return " ".join(rng.choices(words, k=max(1, len(text.split())))) if text else ""

                rec = {
                    "instruction": salad(proto["instruction"]),
                    "context": salad(proto["context"]),
                    "response": salad(proto["response"]),
                    "category": proto["category"],
                }
                if rng.random() < 0.005:
                    rec["response"] += rng.choice([" mail me at jo.doe@example.org", " call +1 650-253-0000 today"])
                if len(made) < 5000:
                    made.append(rec)
            out.write(json.dumps(rec) + "\n")
            if i % max(1, n // 1000) == 0 and i // max(1, n // 1000) < 1000:
                ev.write(json.dumps({"prompt": rec["instruction"] + " " + rec["response"]}) + "\n")


def child(case: str, dolly: str, oasst: str, eval_path: str, out: str) -> None:
    """Run one case in this process; print a JSON line: records read, written, seconds, peak RSS, index bytes."""
    import data_prep.jobs as jobs
    from data_prep.jobs import prepare_oa_dolly

    settings = json.loads(json.dumps(CASES[case]).replace('"EVAL"', json.dumps(eval_path)))
    if case == "off":
        jobs.QualityPass.build = classmethod(lambda cls, *a, **k: None)  # the job without the pass
    t0 = time.perf_counter()
    res = prepare_oa_dolly(out, dolly, oasst or None, overwrite_output_path=True, **settings)
    secs = time.perf_counter() - t0
    read = sum(s.read for s in res.report.sources.values())
    index = res.quality.summary().get("near_dup_index", {}) if res.quality else {}
    row = {
        "case": case,
        "records_read": read,
        "written": res.lines,
        "seconds": round(secs, 2),
        "records_per_s": round(read / secs),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "index_bytes_per_record": round(index["bytes_estimate"] / max(1, index["records"])) if index else None,
        "filtered": {k: v for s in res.report.sources.values() for k, v in s.filtered.items()},
    }
    print(json.dumps(row), flush=True)


def run_case(case: str, dolly: str, oasst: str, eval_path: Path, work: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", case, dolly, oasst, str(eval_path), str(work / f"{case}.jsonl")]
    done = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000", help="synthetic input sizes (records), comma-separated")
    ap.add_argument("--cases", default=",".join(CASES), help=f"which of {', '.join(CASES)}")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    cases = args.cases.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = [("bundled Dolly-15k + OASST1 sample", str(DOLLY), str(OASST), work / "bundled_eval.jsonl")]
        with gzip.open(DOLLY, "rt", encoding="utf-8") as fh, inputs[0][3].open("w") as ev:
            for i, line in enumerate(fh):
                if i % 15 == 0:
                    ev.write(json.dumps({"prompt": json.loads(line)["instruction"]}) + "\n")
        for n in [int(x) for x in args.sizes.split(",") if x]:
            data, ev = work / f"synthetic_{n}.jsonl", work / f"synthetic_{n}_eval.jsonl"
            make_synthetic(data, ev, n)
            inputs.append((f"synthetic {n:,} records", str(data), "", ev))
        for label, dolly, oasst, ev in inputs:
            print(f"\n## {label}")
            print("| case | records/s | seconds | peak RSS MB | LSH index bytes/record | filtered |")
            print("|---|---|---|---|---|---|")
            for case in cases:
                r = run_case(case, dolly, oasst, ev, work)
                print(
                    f"| {case} | {r['records_per_s']:,} | {r['seconds']} | {r['peak_rss_mb']:,} | "
                    f"{r['index_bytes_per_record'] or '-'} | {r['filtered']} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()

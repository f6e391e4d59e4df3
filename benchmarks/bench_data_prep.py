"""Benchmark data_prep: lines/s and peak RSS, and whether memory stays flat as input grows.

Cases (each in a fresh subprocess so peak RSS is its own):
- dolly+oasst: prepare_oa_dolly on the bundled Dolly-15k and OASST1 validation rows;
- oig-N: subsample_openchatkit (sample 100,000) on an N-line OIG-format file made by rendering
  Dolly records into OIG's ``{"text": "<human>: ...\\n<bot>: ..."}`` form, for N = 250k and 1M.

    .venv/bin/python benchmarks/bench_data_prep.py [--lines 250000,1000000]
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOLLY = ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz"
OASST = ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl"


def make_oig_file(path: Path, n_lines: int) -> None:
    """Render dolly into OIG text lines, cycling through the records until ``n_lines``."""
    with gzip.open(DOLLY, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh]
    with path.open("w", encoding="utf-8") as out:
        for i in range(n_lines):
            r = rows[i % len(rows)]
            human = r["instruction"] + ("\n" + r["context"] if r["context"] else "")
            text = f"<human>: {human}\n<bot>: {r['response']} ({i})"
            out.write(json.dumps({"text": text, "metadata": {"source": "bench"}}) + "\n")


def child(case: str, arg: str, out: str) -> None:
    """Run one case in this process and print a JSON line with lines, seconds and peak RSS."""
    from data_prep.jobs import prepare_oa_dolly, subsample_openchatkit

    t0 = time.perf_counter()
    if case == "dolly+oasst":
        res = prepare_oa_dolly(out, str(DOLLY), str(OASST))
    else:
        res = subsample_openchatkit(out, arg, sample_size=100_000, seed=1)
    secs = time.perf_counter() - t0
    read = sum(s.read for s in res.report.sources.values())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {"case": case, "records_read": read, "lines_written": res.lines, "seconds": secs, "peak_rss_mb": rss}
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", default="250000,1000000")
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("dolly+oasst", "-")]
        for n in [int(x) for x in args.lines.split(",")]:
            path = Path(tmp) / f"oig_{n}.jsonl"
            make_oig_file(path, n)
            cases.append((f"oig-{n}", str(path)))
        print(f"{'case':<16}{'records':>10}{'written':>10}{'seconds':>9}{'lines/s':>11}{'peak RSS MB':>13}")
        for case, arg in cases:
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    case.split("-")[0] if case.startswith("oig") else case,
                    arg,
                    str(Path(tmp) / "out.jsonl"),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(
                f"{case:<16}{r['records_read']:>10,}{r['lines_written']:>10,}{r['seconds']:>9.2f}"
                f"{r['records_read'] / r['seconds']:>11,.0f}{r['peak_rss_mb']:>13,.0f}"
            )


if __name__ == "__main__":
    main()

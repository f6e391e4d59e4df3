"""Scaling section of bench_tokenization: ours and gdp at ``--num_workers N``: tokens/s, speedup, serial share, RSS.

Each command is a fresh process (the caller's environment, unchanged: what a user runs) under a wrapper that
reports ``getrusage(RUSAGE_CHILDREN).ru_maxrss``: the largest single process of the command's tree (~ per-worker
peak). Tokens: every non-padding token of every split plus the dropped ones, from our ``data_report.json`` (the
same input for both). Ours at every N must write the same ``manifest.sha256``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "data/tokenizers/gpt-neox-20b"
FLAGS = ["--input_packing_config", "greedy::drop", "--max_seq_length", "2048", "--shuffle", "False"]
# argv: LOG CMD...; runs CMD with stdout+stderr to LOG, prints its exit code, wall s and largest process's peak RSS
WRAPPER = (
    "import json,resource,subprocess,sys,time;t=time.perf_counter();"
    "rc=subprocess.call(sys.argv[2:],stdout=open(sys.argv[1],'wb'),stderr=subprocess.STDOUT);"
    "print(json.dumps({'rc':rc,'s':time.perf_counter()-t,"
    "'rss':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))"
)


def gdp_tokenizer_dir(tmp: Path) -> Path:
    """The Pythia tokenizer plus a model config (gdp reads one from the tokenizer dir); the same dir for both."""
    from transformers import GPTNeoXConfig

    tok = tmp / "pythia_with_config"
    if not tok.exists():
        tok.mkdir()
        shutil.copy(TOKENIZER / "tokenizer.json", tok / "tokenizer.json")
        GPTNeoXConfig(vocab_size=50304).to_json_file(str(tok / "config.json"))
    return tok


def run_once(py: str, module: str, src: Path, out: Path, tok: Path, workers: int, splits: int) -> dict:
    """One ``pipeline`` command under the wrapper: {'s', 'rss' (MB), 'timing' (ours' JSON line or None)}."""
    cmd = [py, "-m", module, "pipeline", "--input_path", str(src), "--output_path", str(out)]
    cmd += ["--pretrained_tokenizer", str(tok), *FLAGS, "--num_training_splits", str(splits)]
    cmd += ["--num_workers", str(workers), "--overwrite_output_path"]
    log = out.with_name(out.name + ".log")
    proc = subprocess.run([sys.executable, "-c", WRAPPER, str(log), *cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"scaling: the timing wrapper failed: {proc.stderr.strip().splitlines()[-1:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    lines = log.read_text(errors="replace").splitlines()
    if res["rc"]:
        tail = next((ln for ln in reversed(lines) if ln.strip()), "")
        raise SystemExit(f"scaling: {module} --num_workers {workers} exited {res['rc']}: {tail.strip()} (log: {log})")
    timing = [ln[ln.index("timing: {") + 8 :] for ln in lines if "timing: {" in ln]
    res["timing"] = json.loads(timing[-1]) if timing else None
    return res


def best_of(reps: int, *args) -> dict:
    """Fastest of ``reps`` runs (its timing line), with the highest peak RSS of them all."""
    runs = [run_once(*args) for _ in range(reps)]
    best = min(runs, key=lambda r: r["s"])
    return {**best, "rss": max(r["rss"] for r in runs)}


def input_tokens(out: Path) -> int:
    """Every non-padding token of every split plus the tokens dropped (encoded, then too long)."""
    splits = json.loads((out / "data_report.json").read_text())["splits"].values()
    kept = sum(v for s in splits for k, v in s["tokens"].items() if k != "padding")
    return kept + sum(v for s in splits for v in s.get("tokens_dropped", {}).values())


def serial_share(run: dict) -> list[str]:
    """serial_s / total_s of ours' timing line, and the same with the start-up outside it (wall - total_s) added."""
    t = run["timing"]
    if not t or not t.get("total_s"):
        return ["n/a", "n/a"]
    start = max(run["s"] - t["total_s"], 0.0)
    return [f"{t['serial_s'] / t['total_s']:.1%}", f"{(t['serial_s'] + start) / run['s']:.1%}"]


def manifest_diff(a: str, b: str) -> list[str]:
    """Files whose hash differs (or that only one manifest lists)."""
    pa = {ln.split("  ", 1)[1]: ln for ln in a.splitlines()}
    pb = {ln.split("  ", 1)[1]: ln for ln in b.splitlines()}
    return sorted(f for f in pa.keys() | pb.keys() if pa.get(f) != pb.get(f))


def scaling(src: Path, tmp: Path, workers: list[int], reps: int, repeat: int, splits: int, gdp_python: str | None):
    """Build the ``repeat``x input, time ours (and gdp) at each N, print the table, RSS, identity and 2x-input lines."""
    tok = gdp_tokenizer_dir(tmp)
    big = tmp / f"scale{repeat}x.jsonl"
    data = src.read_bytes()
    big.write_bytes(data * repeat)
    n_lines = data.count(b"\n") * repeat
    ours, gdp, manifests = {}, {}, {}
    for n in workers:
        out = tmp / f"scale_ours_{n}"
        ours[n] = best_of(reps, sys.executable, "tokenization_prep", big, out, tok, n, splits)
        manifests[n] = (out / "manifest.sha256").read_text()
        if n == workers[0]:
            tokens = input_tokens(out)
        shutil.rmtree(out)
        print(f"  ours N={n}: {ours[n]['s']:.2f} s, timing line: {json.dumps(ours[n]['timing'])}", flush=True)
        if gdp_python:
            out = tmp / f"scale_gdp_{n}"
            gdp[n] = best_of(reps, gdp_python, "generative_data_prep", big, out, tok, n, splits)
            shutil.rmtree(out)
            print(f"  gdp  N={n}: {gdp[n]['s']:.2f} s", flush=True)
    n0 = workers[0]
    print(
        f"\nscaling: {repeat}x input ({n_lines:,} lines, {tokens:,} tokens), greedy::drop, 2048, --shuffle False, "
        f"{splits} training splits; best of {reps}; x = speedup vs N={n0}; serial = serial_s / total_s of ours' "
        "timing line, +start = with the start-up before it; RSS = largest single process (MB)"
    )
    head = ["N", "ours s", "ours tok/s", "ours x", "tokenize x", "serial", "+start", "ours RSS"]
    head += ["gdp s", "gdp tok/s", "gdp x", "gdp RSS"]
    rows = [head + ["ours/gdp"]]
    for n in workers:
        o, g = ours[n], gdp.get(n)
        row = [str(n), f"{o['s']:.2f}", f"{tokens / o['s']:,.0f}", f"{ours[n0]['s'] / o['s']:.2f}x"]
        phase = [(r.get("timing") or {}).get("phases", {}).get("tokenize") for r in (ours[n0], o)]
        row += [f"{phase[0] / phase[1]:.2f}x" if all(phase) else "n/a"]
        row += [*serial_share(o), f"{o['rss']:,.0f}"]
        if g:
            row += [f"{g['s']:.2f}", f"{tokens / g['s']:,.0f}", f"{gdp[n0]['s'] / g['s']:.2f}x", f"{g['rss']:,.0f}"]
            row += [f"{g['s'] / o['s']:.2f}x"]
        else:
            row += ["-"] * 5
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) + 1)]
    for r in rows:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
    diffs = {n: manifest_diff(manifests[n0], manifests[n]) for n in workers[1:]}
    bad = {n: d for n, d in diffs.items() if d}
    if not bad:
        print(f"ours' outputs byte-identical at N = {', '.join(map(str, workers))} (manifest.sha256 equal)")
    for n, d in bad.items():
        print(f"ours' output at N={n} DIFFERS from N={n0}: {', '.join(d[:6])}{' ...' if len(d) > 6 else ''}")
    mem_n = 2 if 2 in workers else workers[-1]
    bigger = tmp / f"scale{2 * repeat}x.jsonl"
    bigger.write_bytes(data * 2 * repeat)
    big.unlink()
    two = run_once(sys.executable, "tokenization_prep", bigger, tmp / "scale_ours_2x", tok, mem_n, splits)
    bigger.unlink()
    shutil.rmtree(tmp / "scale_ours_2x")
    print(
        f"peak RSS ours N={mem_n}: {repeat}x input {ours[mem_n]['rss']:,.0f} MB, {2 * repeat}x input "
        f"{two['rss']:,.0f} MB = {two['rss'] / ours[mem_n]['rss']:.2f}x ({two['s']:.2f} s, one run)"
    )
    mem = [r.get("timing") or {} for r in (ours[mem_n], two)]
    if all(m.get("worker_own_mb") for m in mem):
        w0, w1 = mem[0]["worker_own_mb"], mem[1]["worker_own_mb"]
        print(
            f"  a worker's own memory (USS after a task, the most of any): {w0:,.0f} MB -> {w1:,.0f} MB = "
            f"{w1 / w0:.2f}x; the main process's peak RSS (line index, article tables, plan): "
            f"{mem[0]['main_peak_rss_mb']:,.0f} MB -> {mem[1]['main_peak_rss_mb']:,.0f} MB"
        )
    encode_ceiling(src, workers)
    big.write_bytes(data * repeat)
    leakage_scaling(big, workers)
    big.unlink()
    return bool(bad)


def leakage_scaling(src: Path, workers: list[int]) -> None:
    """The dev-leakage check alone (``remove_leaks``) on ``src`` split 8/1/1 at each N: its time, the same moves."""
    import os

    os.environ["RAYON_NUM_THREADS"] = "1"
    from tokenization_prep.engine import LocalEngine
    from tokenization_prep.inputs import LineIndex
    from tokenization_prep.leakage import remove_leaks
    from tokenization_prep.settings import ArticleSettings
    from tokenization_prep.splits import SplitCounts, assign_lines, split_names

    lines, counts = LineIndex([src]), SplitCounts(8, 1, 1, [])
    parts, first, base = assign_lines(lines.global_numbers, counts, "on_RAM", 0), None, None
    for n in workers:
        engine, t0 = LocalEngine(n), time.perf_counter()
        try:
            moved, leakage = remove_leaks(lines, parts, split_names(counts), "move", ArticleSettings(), engine)
        finally:
            engine.close()
        took = time.perf_counter() - t0
        base, same = base or took, first is None or first == [p.tolist() for p in moved]
        first = first or [p.tolist() for p in moved]
        print(
            f"dev leakage check, N={n}: {took:.1f} s = {base / took:.2f}x, {sum(leakage.checked.values()):,} dev and "
            f"test lines checked, {len(leakage.leaks):,} moved{'' if same else ' -- DIFFERENT moves from N=1'}"
        )


CEILING = """
import os, sys, time
os.environ["RAYON_NUM_THREADS"] = "1"
from tokenization_prep.articles import parse_line, strings_to_encode
from tokenization_prep.settings import ArticleSettings
from tokenization_prep.tokenizer_io import load_tokenizer
tok = load_tokenizer(sys.argv[2]).backend_tokenizer
texts = [t for raw in open(sys.argv[1], "rb") for t in strings_to_encode(parse_line(raw, ArticleSettings()))]
t0 = time.perf_counter()
n = sum(len(e.ids) for i in range(0, len(texts), 2048) for e in tok.encode_batch_fast(texts[i : i + 2048]))
print(n, time.perf_counter() - t0)
"""


def encode_ceiling(src: Path, workers: list[int]) -> None:
    """The machine's own ceiling: the Rust encoder alone, one thread a process, in N processes at once (no Python
    work, no files): how far N processes of pure tokenizing scale here."""
    base = None
    for n in workers:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", CEILING, str(src), str(TOKENIZER)], cwd=ROOT, stdout=subprocess.PIPE
            )
            for _ in range(n)
        ]
        done = [p.communicate()[0].split() for p in procs]
        rate = sum(int(t) for t, _ in done) / max(float(s) for _, s in done)
        base = base or rate
        print(
            f"ceiling: raw encode_batch_fast in {n} process(es) at once, one thread each: {rate:,.0f} tokens/s "
            f"= {rate / base:.2f}x"
        )

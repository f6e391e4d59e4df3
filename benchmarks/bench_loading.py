"""Benchmark loading a ~400M-parameter BLOOM under ZeRO-3 with 2 processes: peak host RSS per rank, old vs new.

- old: every rank calls ``PackedBloomForCausalLM.from_pretrained(dir, dtype=float32)``, the whole model in fp32
  per rank (what the trainer did before ZeRO-3 partitioned loading), then one read of every weight (what
  deepspeed.initialize does next), since an fp32 file is mapped zero-copy and its pages load only when touched;
- new: ``build_model`` with ds/zero3_bf16.json: the model is created inside ``deepspeed.zero.Init`` (bf16) and
  each rank reads only its slice of every tensor from the safetensors file (training/weights.py).

The model (vocab 50,304, hidden 1024, 16 heads, 28 layers: 404M parameters, random init, seed 0) is saved once
with ``save_pretrained`` in --save_dtype under --work and reused. Each path runs as its own 2-process job under
the deepspeed launcher. Per rank, after imports and process-group start: reset the peak (/proc/self/clear_refs
5), take VmRSS as baseline, load, read VmHWM; peak = VmHWM - baseline, also as a ratio of the fp32 model size
(goal for new: <= 0.35). A sampler thread keeps RssAnon / RssFile at the highest VmRSS it sees (every 2 ms).
RssFile pages are the safetensors file's page cache, shared by the ranks but counted in each one's RSS.
The new path's weights are then gathered and compared with the file's tensors cast to bf16 (must be 0).

    .venv/bin/python benchmarks/bench_loading.py [--save_dtype bf16|fp32] [--layers 28] [--work /tmp/bench_loading]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VOCAB = 50304  # the Pythia tokenizer's embedding rows
DS_NAME = "ds/zero3_bf16.json"
MiB = 1024**2


def status() -> dict:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) * 1024
    return out


class Sampler(threading.Thread):
    """Keeps the /proc/self/status reading with the highest VmRSS seen while loading."""

    def __init__(self):
        super().__init__(daemon=True)
        self.best, self.done = status(), threading.Event()

    def run(self):
        while not self.done.wait(0.002):
            s = status()
            if s["VmRSS"] > self.best["VmRSS"]:
                self.best = s


def ds_dict() -> dict:
    ds = json.loads((ROOT / "training/configs" / DS_NAME).read_text())
    ds.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=1, train_batch_size=2)
    return ds


def max_diff(model, src: str) -> tuple[float, int]:
    """Gather every parameter (all ranks) and compare with the file's tensor cast to bf16 on rank 0."""
    import deepspeed
    import torch
    from safetensors import safe_open

    where = {}
    for f in sorted(Path(src).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            where.update({k: f for k in st.keys()})
    prefix, worst, n = model.base_model_prefix + ".", 0.0, 0
    for name, p in model.named_parameters():
        key = name if name in where else name[len(prefix) :]
        with deepspeed.zero.GatheredParameters(p):
            if torch.distributed.get_rank() == 0:
                with safe_open(str(where[key]), "pt") as st:
                    ref = st.get_tensor(key).to(torch.bfloat16)
                assert p.shape == ref.shape, (name, p.shape, ref.shape)
                worst = max(worst, (p.data.float() - ref.float()).abs().max().item())
                n += 1
    return worst, n


def child(path: str, src: str) -> None:
    import deepspeed  # noqa: F401  (imported before the baseline)
    import safetensors.torch  # noqa: F401
    import torch

    from training.config import ModelConfig
    from training.distributed import init_process_group
    from training.modeling import MODEL_CLASSES, build_model

    init_process_group()
    rank = torch.distributed.get_rank()
    torch.distributed.barrier()
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    base = status()
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    if path == "old":
        model = MODEL_CLASSES["bloom"].from_pretrained(src, use_safetensors=True, dtype=torch.float32)
        with torch.no_grad():  # read every weight once, as deepspeed.initialize will: lazily mapped pages count
            sum(float(p.sum()) for p in model.parameters())
    else:
        model, _keep = build_model(
            ModelConfig(kind="bloom", name_or_path=src), VOCAB, 2048, seed=0, ds=ds_dict(), ds_name=DS_NAME
        )
    secs = time.perf_counter() - t0
    sampler.done.set()
    sampler.join()
    end = status()
    params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
    at = sampler.best
    rec = {
        "path": path,
        "rank": rank,
        "seconds": secs,
        "params": params,
        "base": base["VmRSS"],
        "peak": end["VmHWM"] - base["VmRSS"],
        "end": end["VmRSS"] - base["VmRSS"],
        "sampled": at["VmRSS"] - base["VmRSS"],
        "anon": at["RssAnon"] - base["RssAnon"],
        "file": at["RssFile"] - base["RssFile"],
        "dtype": str(next(model.parameters()).dtype),
    }
    if path == "new":
        rec["max_diff"], rec["compared"] = max_diff(model, src)
    os.write(1, f"BENCH {json.dumps(rec)}\n".encode())  # one write (< PIPE_BUF): ranks share the launcher's pipe
    torch.distributed.barrier()


def make_model(work: Path, layers: int, save_dtype: str) -> Path:
    """Save the random-init BLOOM once (cached under ``work``); returns its dir."""
    out = work / f"bloom-h1024-l{layers}-{save_dtype}"
    if (out / "config.json").is_file() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import BloomConfig, BloomForCausalLM

    torch.manual_seed(0)
    cfg = BloomConfig(
        vocab_size=VOCAB,
        hidden_size=1024,
        n_layer=layers,
        n_head=16,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = BloomForCausalLM(cfg).to(torch.bfloat16 if save_dtype == "bf16" else torch.float32)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)  # safetensors is transformers 5's only format
    tmp.rename(out)
    return out


def run_path(path: str, src: Path) -> tuple[list[dict], float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    launcher = Path(sys.executable).parent / "deepspeed"
    t0 = time.perf_counter()
    proc = subprocess.run(
        [str(launcher), "--num_accelerators", "2", "--master_port", str(port), __file__, "--child", path, str(src)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - t0
    recs = [json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode or len(recs) != 2:
        sys.exit(f"{path} path failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return sorted(recs, key=lambda r: r["rank"]), wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--save_dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--work", default="/tmp/bench_loading")
    ap.add_argument("--child", nargs=2)
    ap.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    t0 = time.perf_counter()
    src = make_model(Path(args.work), args.layers, args.save_dtype)
    made = time.perf_counter() - t0
    res = {p: run_path(p, src) for p in ("old", "new")}
    params = res["new"][0][0]["params"]
    fp32 = params * 4
    print(
        f"BLOOM {params / 1e6:.1f}M parameters (hidden 1024, {args.layers} layers, vocab {VOCAB}), saved in "
        f"{args.save_dtype} ({sum(f.stat().st_size for f in src.glob('*.safetensors')) / MiB:,.0f} MB file), "
        f"fp32 size {fp32 / MiB:,.0f} MB; 2 ranks, DS_ACCELERATOR=cpu, {DS_NAME}"
    )
    print(
        "peak = VmHWM - baseline VmRSS; anon/file = RssAnon/RssFile growth at the highest sampled VmRSS; "
        "end = VmRSS growth after loading (MB = MiB)"
    )
    print(
        f"{'path':<5}{'rank':>5}{'dtype':>16}{'load s':>8}{'baseline MB':>13}{'peak MB':>9}{'x fp32':>8}"
        f"{'anon MB':>9}{'file MB':>9}{'end MB':>8}{'job wall s':>12}"
    )
    for path, (recs, wall) in res.items():
        for r in recs:
            print(
                f"{path:<5}{r['rank']:>5}{r['dtype']:>16}{r['seconds']:>8.1f}{r['base'] / MiB:>13,.0f}"
                f"{r['peak'] / MiB:>9,.0f}{r['peak'] / fp32:>8.3f}{r['anon'] / MiB:>9,.0f}{r['file'] / MiB:>9,.0f}"
                f"{r['end'] / MiB:>8,.0f}{wall:>12.1f}"
            )
    worst = max(r["peak"] for r in res["new"][0]) / fp32
    r0 = res["new"][0][0]
    print(
        f"new / old peak (worst rank): {worst / (max(r['peak'] for r in res['old'][0]) / fp32):.2f}x; "
        f"new peak {worst:.3f} x fp32 ({'meets' if worst <= 0.35 else 'misses'} <= 0.35)"
    )
    print(
        f"new path correctness: {r0['compared']} gathered parameters vs file (cast to bf16), max abs diff "
        f"{r0['max_diff']:g}"
    )
    print(f"total wall {time.perf_counter() - t0:.0f} s (model creation {made:.0f} s)")


if __name__ == "__main__":
    main()

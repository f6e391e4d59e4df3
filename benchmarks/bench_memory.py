"""Benchmark one training step's peak memory and time with and without gradient checkpointing (CPU).

A Pythia-shaped model built from config (hidden 512, 8 layers, 8 heads, the Pythia tokenizer's vocab) trains
on packed 2048-token rows of the bundled Dolly+OASST data, forward + backward + AdamW, each setting in its own
process: peak RSS above the post-setup baseline (VmHWM after /proc/self/clear_refs), median step time.

    .venv/bin/python benchmarks/bench_memory.py [--steps 4] [--rows 2] [--work /tmp/bench_memory]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAPE = {"hidden_size": 512, "num_layers": 8, "num_heads": 8}
MiB = 1024**2


def vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def make_data(work: Path) -> Path:
    """Dolly+OASST pairs tokenized at 2048 with bfd packing (cached)."""
    out = work / "oa_dolly_2048"
    if (out / "metadata.yaml").is_file():
        return out
    from data_prep.pipeline import prepare_oa_dolly
    from tests.conftest import DOLLY, OASST_ROWS, PYTHIA_TOKENIZER
    from tokenization_prep.pipeline import PipelineConfig, run_pipeline

    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "oa_dolly.jsonl"
    prepare_oa_dolly(pairs, str(DOLLY), str(OASST_ROWS))
    run_pipeline(PipelineConfig(str(pairs), str(out), str(PYTHIA_TOKENIZER), 2048, "bfd::drop", shuffle="on_RAM",
                                num_training_splits=1))
    return out


def child(data: str, checkpointing: bool, steps: int, rows: int) -> None:
    import torch

    from training.config import ModelConfig, TinyShape
    from training.data import PackedDataset
    from training.modeling import build_model, enable_checkpointing, packed_forward, weighted_loss
    from training.trainer import collate

    ds = PackedDataset(Path(data), "train", 0.0)
    model = build_model(ModelConfig(kind="pythia", tiny=TinyShape(**SHAPE)), ds.meta["vocab_size"], 2048, seed=0)[0]
    if checkpointing:
        enable_checkpointing(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = [collate([ds[s * rows + r] for r in range(rows)]) for s in range(steps + 1)]
    Path("/proc/self/clear_refs").write_text("5")
    base = vm("VmRSS")
    times = []
    for b in batches:
        t0 = time.perf_counter()
        loss_sum, w = weighted_loss(packed_forward(model, b), b["input_ids"], b["weights"])
        (loss_sum / w).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"checkpointing": checkpointing, "params": params, "peak": vm("VmHWM") - base,
                      "step_s": statistics.median(times[1:]), "loss": float(loss_sum / w)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=2, help="packed 2048-token rows per step")
    ap.add_argument("--work", default="/tmp/bench_memory")
    ap.add_argument("--child", nargs=2)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1] == "on", args.steps, args.rows)
        return
    data = make_data(Path(args.work))
    res = []
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, __file__, "--child", str(data), mode, "--steps", str(args.steps),
                              "--rows", str(args.rows)], capture_output=True, text=True, check=True, cwd=ROOT)
        res.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"Pythia-shaped {res[0]['params'] / 1e6:.1f}M parameters {SHAPE}, {args.rows} x 2048 packed rows a step, "
          f"fp32, CPU, forward + backward + AdamW, median of {args.steps} steps")
    print(f"{'gradient checkpointing':<24}{'peak MB':>10}{'step s':>9}{'loss':>9}")
    for r in res:
        mode = "on" if r["checkpointing"] else "off"
        print(f"{mode:<24}{r['peak'] / MiB:>10,.0f}{r['step_s']:>9.2f}{r['loss']:>9.4f}")
    off, on = res
    print(f"on / off: peak {on['peak'] / off['peak']:.2f}x, step time {on['step_s'] / off['step_s']:.2f}x")


if __name__ == "__main__":
    main()

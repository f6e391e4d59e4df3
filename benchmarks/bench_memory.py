"""Benchmark one training step's peak memory and time: full-logits loss vs the fused chunked loss, and
gradient checkpointing off vs on (CPU).

Each setting trains in its own process on packed 2048-token rows of the bundled Dolly+OASST data, forward +
backward + AdamW, fp32: peak RSS above the post-setup baseline (VmHWM after /proc/self/clear_refs), median step.
- loss: a tiny BLOOM-shaped model (hidden 256, 2 layers, 4 heads) at BLOOM's vocab of 250,880, so the logits
  dominate; "full" is cross-entropy over the full fp32 logits (the trainer before issue 10), "fused" is
  ``training/loss.py``.
- checkpointing: a Pythia-shaped model (hidden 512, 8 layers, 8 heads, the Pythia tokenizer's vocab).

    .venv/bin/python benchmarks/bench_memory.py [--what loss|checkpointing|all] [--steps 4] [--rows 2]
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
SHAPES = {
    "pythia": {"hidden_size": 512, "num_layers": 8, "num_heads": 8},
    "bloom": {"hidden_size": 256, "num_layers": 2, "num_heads": 4},
}
BLOOM_VOCAB = 250_880
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
    run_pipeline(
        PipelineConfig(
            input_path=str(pairs),
            output_path=str(out),
            pretrained_tokenizer=str(PYTHIA_TOKENIZER),
            max_seq_length=2048,
            input_packing_config="bfd::drop",
            shuffle="on_RAM",
            num_training_splits=1,
        )
    )
    return out


def child(data: str, kind: str, vocab: int, checkpointing: bool, fused: bool, steps: int, rows: int) -> None:
    import torch

    from training.config import ModelConfig, TinyShape
    from training.data import PackedDataset, collate
    from training.modeling import build_model, enable_checkpointing, packed_forward, packed_loss, weighted_loss

    ds = PackedDataset(Path(data), "train", 0.0)
    model = build_model(
        ModelConfig(kind=kind, tiny=TinyShape(**SHAPES[kind])), max(vocab, ds.data.embedding_rows), 2048, seed=0
    )[0]
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
        w = float(b["weights"][:, :-1].sum())
        if fused:
            loss_sum = packed_loss(model, b)
        else:
            loss_sum, _ = weighted_loss(packed_forward(model, b), b["input_ids"], b["weights"])
        (loss_sum / w).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    params = sum(p.numel() for p in model.parameters())
    print(
        json.dumps(
            {
                "params": params,
                "vocab": model.config.vocab_size,
                "peak": vm("VmHWM") - base,
                "step_s": statistics.median(times[1:]),
                "loss": float(loss_sum / w),
            }
        )
    )


def compare(data: Path, title: str, settings: list[tuple[str, list[str]]], args) -> None:
    res = []
    for _, flags in settings:
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(data),
                *flags,
                "--steps",
                str(args.steps),
                "--rows",
                str(args.rows),
            ],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        res.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"{title}: {res[0]['params'] / 1e6:.1f}M parameters, vocab {res[0]['vocab']:,}, {args.rows} x 2048 packed "
        f"rows a step, fp32, CPU, forward + backward + AdamW, median of {args.steps} steps"
    )
    print(f"{'':<28}{'peak MB':>10}{'step s':>9}{'loss':>9}")
    for (name, _), r in zip(settings, res, strict=True):
        print(f"{name:<28}{r['peak'] / MiB:>10,.0f}{r['step_s']:>9.2f}{r['loss']:>9.4f}")
    a, b = res
    print(
        f"{settings[1][0]} / {settings[0][0]}: peak {b['peak'] / a['peak']:.2f}x, "
        f"step time {b['step_s'] / a['step_s']:.2f}x\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=["loss", "checkpointing", "all"], default="all")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=2, help="packed 2048-token rows per step")
    ap.add_argument("--work", default="/tmp/bench_memory")
    ap.add_argument("--child", nargs=5, metavar=("DATA", "KIND", "VOCAB", "CKPT", "LOSS"))
    args = ap.parse_args()
    if args.child:
        data, kind, vocab, ckpt, loss = args.child
        child(data, kind, int(vocab), ckpt == "on", loss == "fused", args.steps, args.rows)
        return
    data = make_data(Path(args.work))
    if args.what in ("loss", "all"):
        compare(
            data,
            "loss, tiny BLOOM-shaped",
            [
                ("full fp32 logits", ["bloom", str(BLOOM_VOCAB), "off", "full"]),
                ("fused chunked", ["bloom", str(BLOOM_VOCAB), "off", "fused"]),
            ],
            args,
        )
    if args.what in ("checkpointing", "all"):
        compare(
            data,
            "gradient checkpointing, Pythia-shaped",
            [("off", ["pythia", "0", "off", "fused"]), ("on", ["pythia", "0", "on", "fused"])],
            args,
        )


if __name__ == "__main__":
    main()

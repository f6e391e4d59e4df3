"""Benchmark one training step's peak memory and time: full-logits loss vs the fused chunked loss, and
gradient checkpointing off vs on (CPU).

Each setting trains in its own process on packed 2048-token rows of the bundled Dolly+OASST data, forward +
backward + AdamW, fp32: peak RSS above the post-setup baseline (VmHWM after /proc/self/clear_refs), median step.
- loss: a tiny BLOOM-shaped model (hidden 256, 2 layers, 4 heads) at BLOOM's vocab of 250,880, so the logits
  dominate; "full" is cross-entropy over the full fp32 logits (the trainer before issue 10), "fused" is
  ``training/loss.py``.
- checkpointing: a Pythia-shaped model (hidden 512, 8 layers, 8 heads, the Pythia tokenizer's vocab).
- activations: the memory plan's activation estimate (``training/plan.py``) against one forward + backward's
  measured peak, for Pythia and BLOOM shapes, eager / sdpa, checkpointing off / on, on synthetic packed rows
  (two articles a row; the contents do not change the memory). Measured after a warm-up step (gradients already
  allocated), fp32, with glibc returning every freed block >= 64 KiB: the peak RSS above that baseline, and the
  peak bytes held by torch's CPU allocator (profiler memory events: deterministic, no allocator slack).

    .venv/bin/python benchmarks/bench_memory.py [--what loss|checkpointing|activations|all] [--steps 4] [--rows 2]
"""

from __future__ import annotations

import argparse
import json
import os
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
    from data_prep.jobs import prepare_oa_dolly
    from tests.conftest import DOLLY, OASST_ROWS, PYTHIA_TOKENIZER
    from tokenization_prep.pipeline import run_pipeline
    from tokenization_prep.settings import PipelineConfig

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


# (kind, hidden, layers, heads, vocab, micro, length, attn, checkpointing): the rows of benchmarks/README.md
ACTIVATION_CASES = [
    ("pythia", 256, 4, 4, 50_304, 2, 1024, "sdpa", False),
    ("pythia", 256, 4, 4, 50_304, 2, 1024, "sdpa", True),
    ("pythia", 512, 8, 8, 512, 1, 2048, "eager", False),
    ("pythia", 512, 8, 8, 512, 1, 2048, "sdpa", False),
    ("pythia", 512, 8, 8, 512, 1, 2048, "sdpa", True),
    ("bloom", 256, 4, 4, 250_880, 1, 1024, "sdpa", False),
    ("bloom", 512, 8, 8, 512, 2, 512, "eager", False),
    ("bloom", 512, 8, 8, 512, 2, 512, "sdpa", True),
    ("bloom", 512, 8, 8, 512, 1, 2048, "sdpa", False),
]


def activation_child(case: list[str]) -> None:
    """One forward + backward of a tiny model: peak RSS and allocator peak above the post-warm-up baseline."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from training.config import ModelConfig, TinyShape
    from training.modeling import MODEL_CLASSES, enable_checkpointing, packed_loss, tiny_config
    from training.plan import Shape, Workload, activations

    kind, attn = case[0], case[7]
    hidden, layers, heads, vocab, micro, length = map(int, case[1:7])
    ck = case[8] == "True"
    mc = ModelConfig(kind=kind, tiny=TinyShape(hidden_size=hidden, num_layers=layers, num_heads=heads))
    config = tiny_config(mc, vocab, 2048)
    config._attn_implementation = attn if kind == "pythia" else "eager"  # as build_model sets it
    torch.manual_seed(0)
    model = MODEL_CLASSES[kind](config)
    if kind == "bloom":
        model.transformer.attn_impl = attn
    if ck:
        enable_checkpointing(model)
    model.train()
    cut = length // 3
    batch = {
        "input_ids": torch.randint(0, vocab, (micro, length), generator=torch.Generator().manual_seed(0)),
        "position_ids": torch.cat([torch.arange(cut), torch.arange(length - cut)]).repeat(micro, 1),
        "weights": torch.ones(micro, length),
    }
    packed_loss(model, batch).backward()  # warm-up: gradients and one-time buffers exist from here on
    Path("/proc/self/clear_refs").write_text("5")
    base = vm("VmRSS")
    packed_loss(model, batch).backward()
    rss = vm("VmHWM") - base
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        packed_loss(model, batch).backward()
    events = sorted(
        (e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"), key=lambda e: e.start_ns()
    )
    now = peak = 0
    for e in events:
        now += e.nbytes()
        peak = max(peak, now)
    work = Workload(micro_batch=micro, seq_len=length, attn=attn, gradient_checkpointing=ck)
    est = activations(Shape.of(model.config), work, 4, ck).total
    print(json.dumps({"rss": rss, "alloc": peak, "estimate": est}))


def compare_activations() -> None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    print(
        "activations: the plan's estimate vs one forward + backward, fp32, CPU, synthetic packed rows\n"
        f"{'model (hidden/layers/heads, vocab)':<36}{'micro x len':>12}{'attn':>6}{'ckpt':>5}"
        f"{'estimate MB':>12}{'alloc MB':>10}{'est/alloc':>10}{'RSS MB':>9}{'est/RSS':>8}"
    )
    for case in ACTIVATION_CASES:
        out = subprocess.run(
            [sys.executable, __file__, "--activation_child", *map(str, case)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env=env,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        kind, hidden, layers, heads, vocab, micro, length, attn, ck = case
        name = f"{kind} {hidden}/{layers}/{heads}, {vocab:,}"
        print(
            f"{name:<36}{f'{micro} x {length}':>12}{attn:>6}{'on' if ck else 'off':>5}{r['estimate'] / MiB:>12,.0f}"
            f"{r['alloc'] / MiB:>10,.0f}{r['estimate'] / r['alloc']:>10.2f}{r['rss'] / MiB:>9,.0f}"
            f"{r['estimate'] / r['rss']:>8.2f}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", choices=["loss", "checkpointing", "activations", "all"], default="all")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rows", type=int, default=2, help="packed 2048-token rows per step")
    ap.add_argument("--work", default="/tmp/bench_memory")
    ap.add_argument("--child", nargs=5, metavar=("DATA", "KIND", "VOCAB", "CKPT", "LOSS"))
    ap.add_argument("--activation_child", nargs=9, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.activation_child:
        activation_child(args.activation_child)
        return
    if args.what == "activations":
        compare_activations()
        return
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
    if args.what == "all":
        compare_activations()


if __name__ == "__main__":
    main()

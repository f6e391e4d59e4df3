"""Benchmark training layouts: packed HDF5 rows vs Dolly-style dynamic padding, same tiny model and data.

Both layouts come from the bundled Dolly+OASST data_prep output tokenized at 512 with the Pythia
tokenizer: packed = ``bfd::truncate_right`` rows (several conversations per row, attention isolated per
article); dynamic = ``single::truncate_right`` (one conversation per row) re-padded per batch to the
batch's longest row, with the batch size chosen so both layouts feed about the same tokens per step.
Each runs forward + backward + AdamW for the same number of steps in its own process (for peak RSS).

    .venv/bin/python benchmarks/bench_training.py [--steps 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQ = 512
PACKED_ROWS = 4


def prepare(tmp: Path) -> tuple[Path, Path]:
    from data_prep.jobs import prepare_oa_dolly
    from tokenization_prep.pipeline import run_pipeline
    from tokenization_prep.settings import PipelineConfig

    src = tmp / "oa.jsonl"
    prepare_oa_dolly(
        src,
        str(ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz"),
        str(ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl"),
    )
    dirs = []
    for name, packing in (("packed", "bfd::truncate_right"), ("single", "single::truncate_right")):
        out = tmp / name
        run_pipeline(
            PipelineConfig(
                input_path=str(src),
                output_path=str(out),
                pretrained_tokenizer=str(ROOT / "data/tokenizers/gpt-neox-20b"),
                max_seq_length=SEQ,
                input_packing_config=packing,
                shuffle="on_RAM",
                num_training_splits=1,
            )
        )
        dirs.append(out)
    return dirs[0], dirs[1]


def child(layout: str, data_dir: str, steps: int, dyn_batch: int) -> None:
    import numpy as np
    import torch

    from training.config import ModelConfig, TinyShape
    from training.data import PackedDataset, collate, dynamic_batch
    from training.modeling import build_model, packed_forward, weighted_loss

    torch.manual_seed(0)
    ds = PackedDataset(Path(data_dir), "train", 0.0)
    model, _ = build_model(
        ModelConfig(kind="pythia", tiny=TinyShape(hidden_size=64, num_layers=2, num_heads=4)),
        ds.data.embedding_rows,
        SEQ,
        seed=0,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    order = np.random.default_rng(0).permutation(len(ds))
    per_step = PACKED_ROWS if layout == "packed" else dyn_batch
    sup = slots = 0
    t0 = None
    for step in range(steps + 2):  # two warm-up steps are not timed
        if step == 2:
            t0 = time.perf_counter()
            sup = slots = 0
        rows = [ds[int(i)] for i in order[step * per_step : (step + 1) * per_step]]
        if layout == "packed":
            batch = collate(rows)
        else:  # strip each row's padding, then pad the batch to its longest row
            trimmed = []
            for r in rows:
                n = int((r["segment_ids"] == 0).sum())
                trimmed.append({k: v[:n] if v.ndim else v for k, v in r.items()})
            batch = dynamic_batch(trimmed, pad_id=0)
        loss_sum, w = weighted_loss(packed_forward(model, batch), batch["input_ids"], batch["weights"])
        loss = loss_sum / max(w, 1e-8)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sup += w
        slots += batch["input_ids"].numel()
    secs = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "layout": layout,
                "seconds": secs,
                "step_s": secs / steps,
                "supervised_per_s": sup / secs,
                "slots_per_step": slots / steps,
                "supervised_per_step": sup / steps,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def pick_dynamic_batch(single_dir: Path) -> int:
    """The batch size whose mean padded size (rows x longest row) is closest to the packed step's tokens."""
    import h5py
    import numpy as np

    with h5py.File(single_dir / "train_1_of_1.hdf5") as f:
        lengths = (f["token_type_ids"][:] != 2).sum(axis=1)
    order = np.random.default_rng(0).permutation(len(lengths))
    target = PACKED_ROWS * SEQ
    best = min(
        range(1, 33),
        key=lambda b: abs(np.mean([b * lengths[order[i : i + b]].max() for i in range(0, 2000, b)]) - target),
    )
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--child", nargs=4)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), int(args.child[3]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        packed, single = prepare(Path(tmp))
        dyn = pick_dynamic_batch(single)
        res = {}
        for layout, d in (("packed", packed), ("dynamic", single)):
            proc = subprocess.run(
                [sys.executable, __file__, "--child", layout, str(d), str(args.steps), str(dyn)],
                capture_output=True,
                text=True,
                check=True,
            )
            res[layout] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"tiny Pythia-shaped model (hidden 64, 2 layers), length {SEQ}, {args.steps} timed steps, CPU")
        print(
            f"{'layout':<10}{'rows/step':>10}{'slots/step':>11}{'supervised/step':>16}{'step s':>8}"
            f"{'supervised tok/s':>18}{'peak RSS MB':>13}"
        )
        for layout, r in res.items():
            rows = PACKED_ROWS if layout == "packed" else dyn
            print(
                f"{layout:<10}{rows:>10}{r['slots_per_step']:>11,.0f}{r['supervised_per_step']:>16,.0f}"
                f"{r['step_s']:>8.3f}{r['supervised_per_s']:>18,.0f}{r['rss_mb']:>13,.0f}"
            )
        print(
            f"packed / dynamic supervised tokens/s: "
            f"{res['packed']['supervised_per_s'] / res['dynamic']['supervised_per_s']:.2f}x"
        )


if __name__ == "__main__":
    main()

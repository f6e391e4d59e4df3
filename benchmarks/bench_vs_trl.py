"""Benchmark our trainer against TRL's SFTTrainer: same model shape, same data, same optimizer, same token slots.

The model is Pythia-shaped, built from config (hidden 256, 4 layers, 4 heads, the Pythia tokenizer's vocab
rounded up to 64, as ``training/modeling.py`` builds it). The data is a seeded sample of the bundled
Dolly+OASST pairs, tokenized once by tokenization_prep at 2048 (``bfd::drop``). Our trainer trains on those
packed HDF5 rows; TRL gets the very same articles (ids and completion masks cut out of those rows) as a
pre-tokenized dataset and packs them itself (``packing_strategy="bfd"``, which makes it padding-free), with
``completion_only_loss=True``, so both supervise the same tokens. Rows (8,192 token slots per optimizer step):

    ours         python -m training run (DeepSpeed, CPU), 1 row x 4 accumulation, restarting position ids (SDPA,
                 no mask built by us), fused chunked loss
    trl          SFTTrainer, 1 packed row x 4 accumulation, gradient checkpointing off (our batch shape)
    trl-default  SFTTrainer with SFTConfig(packing=True) defaults (gradient checkpointing on, padding-free
                 flattening of the batch into one row), 4 rows x 1 accumulation to keep the slots

All use AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8, weight decay 0.1), clipping 1.0, constant LR, fp32.
Each runs in its own process: seconds/step and supervised tokens/s over the timed steps (warm-up steps
excluded), peak RSS (wait4's ru_maxrss), start-up (process start to the first step's start) and whether packed
attention is isolated (hidden states / logits of a packed article equal those of the article alone).
TRL lives in its own venv under the work dir, never in the project's lock; it is built on the first run.

    .venv/bin/python benchmarks/bench_vs_trl.py [--steps 10] [--warmup 2] [--convs 2000] [--work /tmp/bench_vs_trl]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEQ, HIDDEN, LAYERS, HEADS, LR, ROWS = 2048, 256, 4, 4, 1e-4, 4
TRL_CONFIGS = {  # name -> (per-device batch, accumulation, extra SFTConfig fields)
    "trl": (1, 4, {"padding_free": True, "gradient_checkpointing": False}),
    "trl-default": (4, 1, {}),
}


# ---------------------------------------------------------------- parent (project venv)
def ensure_trl_venv(venv: Path) -> dict:
    """A venv with TRL and the project's exact torch build; reused when it already imports both."""
    py = venv / "bin" / "python"
    torch_v, tf_v = version("torch"), version("transformers")
    probe = (
        "import json, torch, transformers, trl, datasets, accelerate; print(json.dumps({m.__name__: m.__version__ "
        "for m in (torch, transformers, trl, datasets, accelerate)}))"
    )

    def versions():
        if not py.exists():
            return None
        out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, check=False)
        return json.loads(out.stdout) if out.returncode == 0 else None

    found = versions()
    if found and found["torch"] == torch_v:
        return found
    print(f"building the TRL venv in {venv} (torch=={torch_v}, the project's build) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(venv / "bin" / "pip"), "install", "-q", f"torch=={torch_v}", "trl", "datasets"]
    # the project's transformers where TRL allows it, else the one pip picks
    if subprocess.run(pip + [f"transformers=={tf_v}"], check=False).returncode:
        subprocess.run(pip + ["transformers"], check=True)
    found = versions()
    if not found or found["torch"] != torch_v:
        sys.exit(
            f"TRL venv has torch {found and found['torch']}, not {torch_v}: point pip at the CPU wheel "
            "(PIP_FIND_LINKS or --extra-index-url https://download.pytorch.org/whl/cpu)"
        )
    return found


def prepare(work: Path, convs: int) -> Path:
    """Packed HDF5 of a seeded sample of Dolly+OASST conversations (cached per sample size)."""
    out = work / f"data-{convs}"
    if (out / "metadata.yaml").is_file():
        return out
    from data_prep.jobs import prepare_oa_dolly
    from tokenization_prep.pipeline import run_pipeline
    from tokenization_prep.settings import PipelineConfig

    pairs, sample = work / "oa_dolly.jsonl", work / f"oa_dolly-{convs}.jsonl"
    prepare_oa_dolly(
        pairs,
        str(ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz"),
        str(ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl"),
    )
    lines = pairs.read_text().splitlines()
    sample.write_text("".join(x + "\n" for x in random.Random(0).sample(lines, min(convs, len(lines)))))
    run_pipeline(
        PipelineConfig(
            input_path=str(sample),
            output_path=str(out),
            pretrained_tokenizer=str(ROOT / "data/tokenizers/gpt-neox-20b"),
            max_seq_length=SEQ,
            input_packing_config="bfd::drop",
            shuffle="on_RAM",
            num_training_splits=1,
            overwrite_output_path=True,
        )
    )
    return out


def export_articles(data_dir: Path, path: Path) -> dict:
    """Every article of the packed rows as {input_ids, completion_mask} (completion and end tokens supervised)."""
    import h5py
    import numpy as np

    n = sup = 0
    with h5py.File(data_dir / "train_1_of_1.hdf5") as f, open(path, "w") as fh:
        for ids, types in zip(f["input_ids"][:], f["token_type_ids"][:]):
            ends = np.flatnonzero(types == 3) + 1
            for lo, hi in zip(np.concatenate([[0], ends[:-1]]), ends):
                mask = np.isin(types[lo:hi], (1, 3)).astype(int)
                fh.write(json.dumps({"input_ids": ids[lo:hi].tolist(), "completion_mask": mask.tolist()}) + "\n")
                n, sup = n + 1, sup + int(mask[1:].sum())
    return {"articles": n, "supervised_tokens": sup}


def ours_isolated(data_dir: Path) -> float:
    """Max |logit diff| of a packed row's second article vs that article alone, through packed_forward."""
    import torch

    from training.config import ModelConfig, TinyShape
    from training.data import PackedDataset
    from training.modeling import build_model, packed_forward

    ds = PackedDataset(data_dir, "train", 0.0)
    row = next(r for r in (ds[i] for i in range(len(ds))) if int(r["segment_ids"].max()) >= 2)
    model, _ = build_model(
        ModelConfig(kind="pythia", tiny=TinyShape(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS)),
        ds.data.embedding_rows,
        SEQ,
    )
    model.eval()
    seg = row["segment_ids"] == 1
    with torch.no_grad():
        packed = packed_forward(model, {k: v[None] for k, v in row.items()})[0, seg]
        alone = model(input_ids=row["input_ids"][seg][None], use_cache=False).logits[0]
    return float((packed - alone).abs().max())


def spawn(cmd: list[str], log: Path, env: dict, first_line: Path | None = None) -> dict:
    """Run a child to its end; its peak RSS from wait4 and, optionally, when ``first_line`` got its first line."""
    t_spawn = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
        t_first = None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if t_first is None and first_line is not None and first_line.is_file() and b"\n" in first_line.read_bytes():
                t_first = time.time()
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{cmd[:3]} failed (exit {proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    return {"t_spawn": t_spawn, "t_first": t_first, "rss_mb": usage.ru_maxrss / 1024, "wall_s": time.time() - t_spawn}


def ds_ops() -> dict:
    """mtime of every JIT-built torch extension (DeepSpeed's CPU ops): a rebuild lands in our start-up."""
    base = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    return {str(p): p.stat().st_mtime for p in base.rglob("*.so")} if base.is_dir() else {}


def summarize(step_s: list[float], sup: list[float], real: list[float], warmup: int) -> dict:
    s, u, r = sum(step_s[warmup:]), sum(sup[warmup:]), sum(real[warmup:])
    n = len(step_s) - warmup
    return {"step_s": s / n, "supervised_per_s": u / s, "supervised_per_step": u / n, "real_per_step": r / n}


def run_ours(work: Path, data_dir: Path, steps: int, warmup: int, env: dict) -> dict:
    import yaml

    out = work / "ours"
    cfg = {
        "name": "bench_vs_trl",
        "data_dir": str(data_dir),
        "output_path": str(out),
        "model": {"kind": "pythia", "tiny": {"hidden_size": HIDDEN, "num_layers": LAYERS, "num_heads": HEADS}},
        "deepspeed": "training/configs/ds/cpu.json",
        "max_steps": steps + warmup,
        "micro_batch_size": 1,
        "gradient_accumulation_steps": ROWS,
        "lr": LR,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "log_every": 1,
        "save_every": 0,
        "eval_every": 0,
        "seed": 42,
    }
    (work / "ours.yaml").write_text(yaml.safe_dump(cfg))
    metrics = out / "logs" / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    py = ROOT / ".venv" / "bin" / "python"
    before = ds_ops()
    run = spawn(
        [str(py if py.exists() else sys.executable), "-m", "training", "run", "--config", str(work / "ours.yaml")],
        work / "ours.log",
        {**env, "DS_ACCELERATOR": "cpu"},
        first_line=metrics,
    )
    recs = [json.loads(x) for x in metrics.read_text().splitlines()]
    step_s = [r["step_s"] for r in recs]
    res = summarize(
        step_s, [r["supervised_tokens"] for r in recs], [r["tokens_per_s"] * r["step_s"] for r in recs], warmup
    )
    return {
        **res,
        "rss_mb": run["rss_mb"],
        "startup_s": run["t_first"] - step_s[0] - run["t_spawn"],
        "wall_s": run["wall_s"],
        "losses": [r["loss"] for r in recs],
        "ds_ops_built": sorted(Path(p).stem for p, m in ds_ops().items() if before.get(p) != m),
    }


def run_trl(name: str, work: Path, venv: Path, data_dir: Path, steps: int, warmup: int, env: dict) -> dict:
    out = work / f"{name}.json"
    args = {
        "name": name,
        "articles": str(work / "articles.jsonl"),
        "tokenizer": str(data_dir / "tokenizer"),
        "vocab": __import__("yaml").safe_load((data_dir / "metadata.yaml").read_text())["vocab_size"],
        "steps": steps + warmup,
        "out": str(out),
        "work": str(work / name),
    }
    run = spawn([str(venv / "bin" / "python"), __file__, "--trl_child", json.dumps(args)], work / f"{name}.log", env)
    child = json.loads(out.read_text())
    ends = [child["t_begin"]] + child["t_end"]
    step_s = [b - a for a, b in itertools.pairwise(ends)]
    res = summarize(step_s, child["sup"], child["real"], warmup)
    return {
        **res,
        "rss_mb": run["rss_mb"],
        "startup_s": child["t_begin"] - run["t_spawn"],
        "wall_s": run["wall_s"],
        **{k: child[k] for k in ("isolation_diff", "losses", "settings")},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per trainer")
    ap.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps before them")
    ap.add_argument("--convs", type=int, default=2000, help="conversations sampled from Dolly+OASST (seed 0)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_vs_trl"), help="TRL venv, data and results")
    ap.add_argument("--trl_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_child:
        trl_child(json.loads(args.trl_child))
        return
    t0 = time.time()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    venv = work / "venv-trl"
    versions = ensure_trl_venv(venv)
    data_dir = prepare(work, args.convs)
    data = export_articles(data_dir, work / "articles.jsonl")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HOME": str(work / "hf"),
    }
    res = {"ours": run_ours(work, data_dir, args.steps, args.warmup, env)}
    res["ours"]["isolation_diff"] = ours_isolated(data_dir)
    for name in TRL_CONFIGS:
        res[name] = run_trl(name, work, venv, data_dir, args.steps, args.warmup, env)
    total = time.time() - t0
    (work / "results.json").write_text(
        json.dumps(
            {
                "results": res,
                "trl_venv": versions,
                "data": data,
                "args": {k: str(v) for k, v in vars(args).items() if k != "trl_child"},
                "total_s": total,
            },
            indent=2,
        )
    )

    print(
        f"\nPythia-shaped model from config (hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads), {data['articles']:,} "
        f"Dolly+OASST articles at {SEQ}, {ROWS * SEQ:,} token slots/step, {args.steps} timed steps after "
        f"{args.warmup} warm-up, CPU ({os.cpu_count()} cores)"
    )
    print("TRL venv: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    print(
        f"{'trainer':<13}{'rows x acc':>11}{'real tok/step':>14}{'sup tok/step':>13}{'s/step':>8}"
        f"{'sup tok/s':>11}{'peak RSS MB':>13}{'start-up s':>12}{'isolated':>10}"
    )
    for name, r in res.items():
        shape = "1 x 4" if name == "ours" else "{} x {}".format(*TRL_CONFIGS[name][:2])
        iso = "yes" if r["isolation_diff"] < 1e-4 else "NO"
        print(
            f"{name:<13}{shape:>11}{r['real_per_step']:>14,.0f}{r['supervised_per_step']:>13,.0f}"
            f"{r['step_s']:>8.2f}{r['supervised_per_s']:>11,.0f}{r['rss_mb']:>13,.0f}{r['startup_s']:>12.1f}"
            f"{iso:>10} (max diff {r['isolation_diff']:.1e})"
        )
    for name in TRL_CONFIGS:
        o, t = res["ours"], res[name]
        print(
            f"ours / {name}: supervised tok/s {o['supervised_per_s'] / t['supervised_per_s']:.2f}x, "
            f"peak RSS {o['rss_mb'] / t['rss_mb']:.2f}x, start-up {o['startup_s'] / t['startup_s']:.2f}x"
        )
    if res["ours"]["ds_ops_built"]:
        print(
            f"note: ours' start-up includes DeepSpeed JIT-building {', '.join(res['ours']['ds_ops_built'])} "
            "(torch_extensions cache cold or invalidated); a warm run starts in a few seconds"
        )
    print(f"results in {work / 'results.json'}; total {total:.0f} s")


# ---------------------------------------------------------------- TRL child (TRL venv: no project imports)
def trl_child(a: dict) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    batch, accum, extra = TRL_CONFIGS[a["name"]]
    with open(a["articles"]) as fh:
        rows = [json.loads(x) for x in fh]
    tok = AutoTokenizer.from_pretrained(a["tokenizer"])
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=-(-a["vocab"] // 64) * 64,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,
        max_position_embeddings=SEQ,
        rotary_pct=0.25,
        use_parallel_residual=True,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPTNeoXForCausalLM(config)
    cfg = SFTConfig(
        output_dir=a["work"],
        max_length=SEQ,
        packing=True,
        packing_strategy="bfd",
        completion_only_loss=True,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        learning_rate=LR,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=a["steps"],
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        save_strategy="no",
        disable_tqdm=True,
        seed=42,
        **extra,
    )

    class CountingSFT(SFTTrainer):
        sup = real = 0

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:  # labels are the input ids, -100 where unsupervised and at every article start
                self.sup += int((inputs["labels"][:, 1:] != -100).sum())
                self.real += int(inputs["input_ids"].numel())
            return super().compute_loss(model, inputs, *args, **kwargs)

    rec = {"t_begin": None, "t_end": [], "sup": [], "real": [], "losses": []}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            rec["t_begin"] = rec["t_begin"] or time.time()

        def on_step_end(self, args, state, control, **kw):
            rec["t_end"].append(time.time())
            rec["sup"].append(trainer.sup - sum(rec["sup"]))
            rec["real"].append(trainer.real - sum(rec["real"]))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                rec["losses"].append(logs["loss"])

    trainer = CountingSFT(
        model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[Clock()]
    )
    trainer.train()
    rec["settings"] = {
        "padding_free": trainer.padding_free,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "attn_implementation": model.config._attn_implementation,
        "completion_only_loss": trainer.completion_only_loss,
        "loss_type": cfg.loss_type,
    }
    # isolation: a packed batch as the trainer feeds it vs its second article alone (final hidden states)
    model.eval()
    for b in trainer.get_train_dataloader():
        starts = (b["position_ids"][0] == 0).nonzero().flatten().tolist()
        if len(starts) >= 3:
            break
    lo, hi = starts[1], starts[2]
    inputs = {k: v for k, v in b.items() if k != "labels"}
    with torch.no_grad():
        packed = model.base_model(**inputs, use_cache=False).last_hidden_state[0, lo:hi]
        alone = model.base_model(input_ids=b["input_ids"][:, lo:hi], use_cache=False).last_hidden_state[0]
    rec["isolation_diff"] = float((packed - alone).abs().max())
    Path(a["out"]).write_text(json.dumps(rec))


if __name__ == "__main__":
    main()

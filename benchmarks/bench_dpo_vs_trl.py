"""Benchmark our DPO stage (``objective: dpo``) against TRL's DPOTrainer: same model, same pairs, same settings.

The model is Pythia-shaped, built from config (hidden 256, 4 layers, 4 heads, the Pythia tokenizer's vocab rounded
up to 64, as ``training/modeling.py`` builds it), saved once with save_pretrained (safetensors): both trainers load
those very weights. The pairs are a seeded sample (``--pairs``, 64) of the bundled OASST1 sample's, made as users
make them (``python -m data_prep prepare_preferences``, then ``python -m tokenization_prep pipeline``: one pair a row,
prompt | chosen | rejected | padding, token types 0 | 1 | 4 | 2). TRL gets the same token ids: ``prompt_ids``,
``chosen_ids`` and ``rejected_ids`` cut out of those HDF5 rows, as the pre-tokenized columns its own
``_prepare_dataset`` would produce (that step, which only tokenizes text, is skipped), so both score the same
tokens. Settings on both sides: sigmoid loss, beta 0.1, reference log-probs precomputed before training
(``precompute_ref_log_probs=True`` / ``reference: precomputed``), AdamW (lr 1e-4, betas 0.9/0.999, eps 1e-8,
weight decay 0.1 on matrices), clipping 1.0, constant LR, fp32, no dropout, 2 pairs x 2 accumulation a step, the
rows in our trainer's seeded order (TRL's sampler set to sequential over the rows in that order).

1. First step, in process, on the same batch of pairs: loss, per-pair log-probs and rewards and every parameter's
   gradient, TRL (``DPOTrainer.compute_loss`` + backward) against ours (``training/preference.py``: the trainer's
   ``PairLoss`` path, and plain autograd through ``preference_loss`` as a control); twice: with the reference
   equal to the policy (the users' case: the loss is ln 2, the gradient is not trivial) and with a reference
   model of other weights (loss and rewards away from their start values). Tolerance: 1e-5 relative on the loss,
   1e-4 of each tensor's max |gradient| on every gradient element; beyond it the script exits 1.
2. Timed: ``python -m training run --config`` (a generated stage YAML) against TRL's ``trainer.train()``, each in
   its own process: seconds/step and pairs/s over the timed steps (warm-up excluded), peak RSS (wait4's
   ru_maxrss), start-up, and each step's loss side by side (same rows and optimizer: they must track).
TRL lives in its own venv under the work dir (``bench_vs_trl.ensure_trl_venv``), never in the project's lock.
On the CPU, TRL 1.16's fused LM head scores every position of the padded batch (prompt and padding included, with
entropy, mean logit and top-1 per position): it keeps only the completion positions on CUDA/XPU with Triton. Ours
scores the reply tokens alone on any device, so the CPU speed ratio is not a GPU's.

    .venv/bin/python benchmarks/bench_dpo_vs_trl.py [--steps 6] [--warmup 2] [--work /tmp/bench_dpo_vs_trl]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_vs_trl import ds_ops, ensure_trl_venv, spawn  # noqa: E402 (stdlib-only module, also in the TRL venv)

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, LAYERS, HEADS, LR, BETA, MICRO, ACCUM = 256, 4, 4, 1e-4, 0.1, 2, 2
OASST = ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl"
TOKENIZER = ROOT / "data/tokenizers/gpt-neox-20b"
TRL_CONFIGS = {  # name -> extra DPOConfig fields; both keep fp32 and precomputed reference log-probs
    "trl": {"gradient_checkpointing": False},  # our settings
    "trl-default": {},  # DPOConfig's defaults otherwise (gradient checkpointing on)
}
TOL_LOSS, TOL_GRAD = 1e-5, 1e-4  # relative: |a - b| / |b| on the loss; max |diff| / max |grad| per tensor


# ---------------------------------------------------------------- parent (project venv)
def project_python() -> str:
    py = ROOT / ".venv" / "bin" / "python"
    return str(py if py.exists() else sys.executable)


def prepare(work: Path, seq: int, n_pairs: int) -> Path:
    """Pairs from the bundled OASST1 sample (``prepare_preferences``), a seeded sample of ``n_pairs`` of them, and
    its tokenized dir (``tokenization_prep pipeline``, no dev split): the users' commands (cached)."""
    out = work / f"data-{seq}-{n_pairs}"
    if (out / "metadata.yaml").is_file():
        return out
    pairs, sample = work / "pairs.jsonl", work / f"pairs-{n_pairs}.jsonl"

    def run(*cmd):
        subprocess.run([project_python(), "-m", *cmd, "--overwrite_output_path"], cwd=ROOT, check=True)

    run("data_prep", "prepare_preferences", "--oasst", str(OASST), "--output_path", str(pairs))
    lines = pairs.read_text().splitlines()
    sample.write_text("".join(x + "\n" for x in random.Random(0).sample(lines, min(n_pairs, len(lines)))))
    run(
        "tokenization_prep",
        "pipeline",
        "--input_path",
        str(sample),
        "--output_path",
        str(out),
        "--pretrained_tokenizer",
        str(TOKENIZER),
        "--max_seq_length",
        str(seq),
    )
    return out


def train_rows(data_dir: Path) -> tuple[list, object]:
    """The train split's rows (input_ids, token_type_ids) in our trainer's row order, and the dir's schema."""
    import h5py

    from training.data import load_data

    data = load_data(data_dir)
    rows = []
    for path in data.splits["train"]:
        with h5py.File(path) as f:
            rows += list(zip(f["input_ids"][:], f["token_type_ids"][:]))
    return rows, data


def cut(ids, types) -> dict:
    """A preference row's prompt, chosen and rejected ids (contract: prompt | chosen | rejected | padding)."""
    import numpy as np

    c0, r0 = int(np.flatnonzero(types == 1)[0]), int(np.flatnonzero(types == 4)[0])
    end = r0 + int((types[r0:] == 4).sum())
    if not (types[:c0] == 0).all() or not (types[c0:r0] == 1).all() or not (types[end:] == 2).all():
        raise SystemExit("a train row is not laid out prompt | chosen | rejected | padding")
    return {"prompt_ids": ids[:c0].tolist(), "chosen_ids": ids[c0:r0].tolist(), "rejected_ids": ids[r0:end].tolist()}


def make_models(work: Path, data) -> tuple[Path, Path]:
    """The initial weights (seed 0) and another model's (seed 1, a reference unlike the policy), each a
    save_pretrained dir (safetensors) with the data's tokenizer beside it (cached)."""
    from training.config import ModelConfig, TinyShape
    from training.modeling import build_model

    dirs = work / "init", work / "other_ref"
    for seed, out in enumerate(dirs):
        if (out / "model.safetensors").is_file():
            continue
        shape = TinyShape(hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS)
        model, _ = build_model(ModelConfig(kind="pythia", tiny=shape), data.embedding_rows, 2048, seed=seed)
        model.save_pretrained(str(out), safe_serialization=True)
        for f in (data.path / "tokenizer").iterdir():
            shutil.copy(f, out / f.name)
    return dirs


def ours_first_step(init: Path, ref: Path | None, data, rows: list, index: list[int]) -> dict:
    """Our first step on rows ``index``, in process through training/preference.py: loss (mean over the pairs, as
    a step of them), per-pair log-probs and rewards, every parameter's gradient; ``ref`` None: reference = policy."""
    import torch

    from training.config import DpoConfig, ModelConfig
    from training.modeling import build_model
    from training.preference import PairLoss, preference_batch, preference_loss, sequence_logps

    def load(path):
        return build_model(ModelConfig(kind="pythia", name_or_path=str(path)), data.embedding_rows, 2048)[0]

    cfg = DpoConfig(beta=BETA, loss="sigmoid")
    batch = preference_batch([{"input_ids": rows[k][0], "token_type_ids": rows[k][1], "index": k} for k in index])
    model = load(init)
    model.eval()
    reference, counts = sequence_logps(load(ref).eval() if ref else model, batch)
    policy, _ = sequence_logps(model, batch)
    b = len(index)
    model.train()
    out = {"reference": reference.tolist(), "policy": policy.tolist()}
    pair = PairLoss(cfg, reference)  # the trainer's forward: the DPO surrogate inside the output head
    ids, pos, w = batch["input_ids"], batch["position_ids"], batch["weights"]
    (model(input_ids=ids, position_ids=pos, loss_weights=w, preference=pair).loss / b).backward()  # mean over pairs
    out["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    st = pair.stats
    out.update(
        loss=float(st["losses"].double().mean()),
        losses=st["losses"].tolist(),
        chosen_rewards=st["chosen_rewards"].tolist(),
        rejected_rewards=st["rejected_rewards"].tolist(),
    )
    # control: plain autograd, full fp32 log-softmax per sequence (no fused head), then preference_loss
    model.zero_grad()
    hidden, head, logps = model.packed_hidden(ids, pos), model.get_output_embeddings().weight, []
    for s in range(2 * b):
        m = w[s, :-1].bool()
        lp = torch.log_softmax((hidden[s, :-1][m] @ head.t()).float(), dim=-1)
        logps.append(lp.gather(1, ids[s, 1:][m][:, None]).double().sum())
    logps = torch.stack(logps)
    losses, _, _ = preference_loss(logps[:b], logps[b:], reference[:b], reference[b:], counts[:b], counts[b:], cfg)
    losses.mean().backward()
    out["grads_autograd"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    out["loss_autograd"] = float(losses.mean().detach())
    return out


def compare(ours: dict, trl: dict, grads_trl: dict) -> dict:
    """Loss, per-pair rewards and log-probs, and gradients: ours against TRL's."""

    def rel(a, b):
        return abs(a - b) / max(abs(b), 1e-30)

    def worst(grads):
        rows = []
        for n, g in grads_trl.items():
            d = float((grads[n].double() - g.double()).abs().max())
            rows.append((d / max(float(g.abs().max()), 1e-30), d, n))
        return {"max_rel": max(rows)[0], "max_abs": max(r[1] for r in rows), "worst": max(rows)[2], "params": len(rows)}

    b = len(ours["losses"])
    pairs = {
        k: max(abs(x - y) for x, y in zip(ours[k], trl[k]))
        for k in ("chosen_rewards", "rejected_rewards", "policy", "reference")
    }
    if set(ours["grads"]) != set(grads_trl):
        raise SystemExit(f"parameter names differ: {sorted(set(ours['grads']) ^ set(grads_trl))[:5]}")
    return {
        "pairs": b,
        "loss_ours": ours["loss"],
        "loss_trl": trl["loss"],
        "loss_rel": rel(ours["loss"], trl["loss"]),
        "loss_autograd_rel": rel(ours["loss_autograd"], trl["loss"]),
        "max_abs_diff": pairs,
        "grads": worst(ours["grads"]),
        "grads_autograd": worst(ours["grads_autograd"]),
        "trl_logged": trl["logged"],
    }


def run_ours(work: Path, data_dir: Path, init: Path, steps: int, warmup: int, env: dict) -> dict:
    import yaml

    out = work / "ours"
    cfg = {
        "name": "bench_dpo_vs_trl",
        "data_dir": str(data_dir),
        "init_from": str(init),
        "model": {"kind": "pythia", "name_or_path": str(init)},
        "objective": "dpo",
        "dpo": {"beta": BETA, "loss": "sigmoid", "reference": "precomputed"},
        "output_path": str(out),
        "max_steps": steps + warmup,
        "micro_batch_size": MICRO,
        "gradient_accumulation_steps": ACCUM,
        "lr": LR,
        "weight_decay": 0.1,
        "grad_clip": 1.0,
        "log_every": 1,
        "save_every": 0,
        "eval_every": 0,
        "seed": 42,
    }
    (work / "ours.yaml").write_text(yaml.safe_dump(cfg))
    shutil.rmtree(out, ignore_errors=True)  # a stored reference pass would be reused: run it again, as TRL does
    metrics = out / "logs" / "metrics.jsonl"
    before = ds_ops()
    cmd = [project_python(), "-m", "training", "run", "--config", str(work / "ours.yaml"), "--overwrite_output_path"]
    run = spawn(cmd, work / "ours.log", {**env, "DS_ACCELERATOR": "cpu"}, first_line=metrics)
    recs = [json.loads(x) for x in metrics.read_text().splitlines()]
    step_s = [r["step_s"] for r in recs]
    timed = step_s[warmup:]
    return {
        "step_s": sum(timed) / len(timed),
        "pairs_per_s": MICRO * ACCUM * len(timed) / sum(timed),
        "tokens_per_step": sum(r.get("tokens_per_s", 0) * r["step_s"] for r in recs[warmup:]) / len(timed),
        "rss_mb": run["rss_mb"],
        "startup_s": run["t_first"] - step_s[0] - run["t_spawn"],
        "ref_written_s": (out / "reference_logps.safetensors").stat().st_mtime - run["t_spawn"],
        "wall_s": run["wall_s"],
        "losses": [r["loss"] for r in recs],
        "first_record": recs[0],
        "ds_ops_built": sorted(Path(p).stem for p, m in ds_ops().items() if before.get(p) != m),
    }


def trl_child_run(venv: Path, args: dict, log: Path, env: dict) -> dict:
    run = spawn([str(venv / "bin" / "python"), __file__, "--trl_child", json.dumps(args)], log, env)
    return {**json.loads(Path(args["out"]).read_text()), **run}


def run_trl(name: str, work: Path, venv: Path, common: dict, steps: int, warmup: int, env: dict) -> dict:
    args = {**common, "mode": "train", "name": name, "steps": steps + warmup, "out": str(work / f"{name}.json")}
    child = trl_child_run(venv, args, work / f"{name}.log", env)
    ends = [child["t_begin"]] + child["t_end"]
    step_s = [b - a for a, b in itertools.pairwise(ends)][warmup:]
    return {
        "step_s": sum(step_s) / len(step_s),
        "pairs_per_s": MICRO * ACCUM * len(step_s) / sum(step_s),
        "tokens_per_step": sum(child["tokens"][warmup:]) / len(step_s),
        "rss_mb": child["rss_mb"],
        "startup_s": child["t_begin"] - child["t_spawn"],
        "ref_pass_s": child["ref_pass_s"],
        "wall_s": child["wall_s"],
        "losses": child["losses"],
        "settings": child["settings"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per trainer")
    ap.add_argument("--warmup", type=int, default=2, help="untimed optimizer steps before them")
    ap.add_argument("--seq", type=int, default=1024, help="max_seq_length of the tokenized pairs")
    ap.add_argument("--pairs", type=int, default=64, help="OASST1 pairs sampled (seed 0): both reference passes")
    ap.add_argument("--check_pairs", type=int, default=4, help="pairs in the first-step gradient check")
    ap.add_argument("--skip_timing", action="store_true", help="the first-step check only")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_dpo_vs_trl"), help="TRL venv, data and results")
    ap.add_argument("--trl_child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.trl_child:
        trl_child(json.loads(args.trl_child))
        return
    import numpy as np
    from safetensors.torch import load_file

    from training.data import epoch_order

    t0 = time.time()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    venv = work / "venv-trl"
    versions = ensure_trl_venv(venv)
    data_dir = prepare(work, args.seq, args.pairs)
    rows, data = train_rows(data_dir)
    init, other = make_models(work, data)
    order = epoch_order(len(rows), 42, 0)  # our trainer's row order (seed 42, epoch 0): TRL reads them so
    with open(work / "pairs_ordered.jsonl", "w") as fh:
        for k in order:
            fh.write(json.dumps({**cut(*rows[k]), "row": int(k)}) + "\n")
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HOME": str(work / "hf"),
    }
    common = {"pairs": str(work / "pairs_ordered.jsonl"), "init": str(init), "seq": args.seq, "work": str(work)}
    check_rows = [int(k) for k in order[: args.check_pairs]]  # the first step's rows, as one batch
    checks = {}
    for label, ref in (("reference = policy", None), ("reference = other weights", other)):
        out = work / f"check-{'self' if ref is None else 'other'}"
        child = {
            **common,
            "mode": "check",
            "ref": str(ref) if ref else None,
            "n": args.check_pairs,
            "out": str(out) + ".json",
            "grads": str(out) + ".safetensors",
        }
        trl = trl_child_run(venv, child, out.with_suffix(".log"), env)
        ours = ours_first_step(init, ref, data, rows, check_rows)
        checks[label] = compare(ours, trl, load_file(child["grads"]))
    res = {}
    if not args.skip_timing:
        res["ours"] = run_ours(work, data_dir, init, args.steps, args.warmup, env)
        for name in TRL_CONFIGS:
            res[name] = run_trl(name, work, venv, common, args.steps, args.warmup, env)
    total = time.time() - t0
    summary = {
        "checks": checks,
        "timing": res,
        "trl_venv": versions,
        "train_pairs": len(rows),
        "args": {k: str(v) for k, v in vars(args).items() if k != "trl_child"},
        "total_s": total,
    }
    (work / "results.json").write_text(json.dumps(summary, indent=2, default=float))
    if not report(summary, args, np):
        sys.exit("the first steps disagree beyond the tolerance")


def report(s: dict, args, np) -> bool:
    """Print the figures; whether the first steps agree within the tolerance."""
    print(
        f"\nPythia-shaped model from config (hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads), {s['train_pairs']} "
        f"OASST1 train pairs at {args.seq}, sigmoid beta {BETA}, precomputed reference, fp32, CPU ({os.cpu_count()} "
        "cores)\nTRL venv: " + ", ".join(f"{k} {v}" for k, v in s["trl_venv"].items())
    )
    print(
        f"first step on {args.check_pairs} pairs (tolerance: loss {TOL_LOSS:g} relative, grads {TOL_GRAD:g} of "
        "each tensor's max |grad|):"
    )
    ok = True
    for label, c in s["checks"].items():
        g, ga, d = c["grads"], c["grads_autograd"], c["max_abs_diff"]
        ok &= c["loss_rel"] <= TOL_LOSS and g["max_rel"] <= TOL_GRAD
        print(
            f"  {label}: loss ours {c['loss_ours']:.8f} TRL {c['loss_trl']:.8f} (rel {c['loss_rel']:.1e}); rewards "
            f"max |diff| chosen {d['chosen_rewards']:.1e} rejected {d['rejected_rewards']:.1e}; log-probs policy "
            f"{d['policy']:.1e} reference {d['reference']:.1e}; grads of {g['params']} tensors: max rel "
            f"{g['max_rel']:.1e} (max abs {g['max_abs']:.1e}, {g['worst']}); plain autograd: {ga['max_rel']:.1e}"
        )
    print("  " + ("AGREE within tolerance" if ok else "DISAGREE beyond tolerance"))
    if not s["timing"]:
        return ok
    print(
        f"{'trainer':<13}{'pairs x acc':>12}{'tok/step':>10}{'s/step':>8}{'pairs/s':>9}{'peak RSS MB':>13}"
        f"{'start-up s':>12}  reference pass"
    )
    for name, r in s["timing"].items():
        print(
            f"{name:<13}{f'{MICRO} x {ACCUM}':>12}{r['tokens_per_step']:>10,.0f}{r['step_s']:>8.2f}"
            f"{r['pairs_per_s']:>9.2f}{r['rss_mb']:>13,.0f}{r['startup_s']:>12.1f}  "
            + (
                f"{r['ref_pass_s']:.1f} s"
                if "ref_pass_s" in r
                else f"file written {r['ref_written_s']:.1f} s after spawn"
            )
        )
    o = s["timing"]["ours"]
    for name in TRL_CONFIGS:
        t = s["timing"][name]
        n = min(len(o["losses"]), len(t["losses"]))
        diff = float(np.max(np.abs(np.subtract(o["losses"][:n], t["losses"][:n]))))
        print(
            f"ours / {name}: pairs/s {o['pairs_per_s'] / t['pairs_per_s']:.2f}x, peak RSS "
            f"{o['rss_mb'] / t['rss_mb']:.2f}x; per-step losses max |diff| {diff:.1e} over {n} steps"
        )
    print("losses ours: " + " ".join(f"{x:.5f}" for x in o["losses"]))
    print("losses trl:  " + " ".join(f"{x:.5f}" for x in s["timing"]["trl"]["losses"]))
    if o["ds_ops_built"]:
        print(f"note: ours' start-up includes DeepSpeed JIT-building {', '.join(o['ds_ops_built'])}")
    print(f"results in {args.work / 'results.json'}; total {s['total_s']:.0f} s")
    return ok


# ---------------------------------------------------------------- TRL child (TRL venv: no project imports)
def trl_child(a: dict) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, GPTNeoXForCausalLM, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPO(DPOTrainer):
        """The pairs come as the prompt_ids / chosen_ids / rejected_ids columns ``_prepare_dataset`` makes from
        text: nothing to tokenize (our pairs never exceed max_length, so its length filter has nothing to drop)."""

        tokens, ref_pass_s = 0, 0.0

        def _precompute_ref_logps(self, *args, **kwargs):  # timed: the reference pass
            t = time.time()
            out = super()._precompute_ref_logps(*args, **kwargs)
            self.ref_pass_s += time.time() - t
            return out

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                self.tokens += int(inputs["attention_mask"].sum())
            return super().compute_loss(model, inputs, *args, **kwargs)

    with open(a["pairs"]) as fh:
        pairs = [{k: v for k, v in json.loads(x).items() if k != "row"} for x in fh]
    check = a["mode"] == "check"
    if check:
        pairs = pairs[: a["n"]]
    tok = AutoTokenizer.from_pretrained(a["init"])
    load = lambda p: GPTNeoXForCausalLM.from_pretrained(p, dtype=torch.float32)  # noqa: E731
    model = load(a["init"])
    ref = load(a["ref"]) if check and a["ref"] else None
    extra = {"gradient_checkpointing": False} if check else TRL_CONFIGS[a["name"]]
    cfg = DPOConfig(
        output_dir=str(Path(a["work"]) / f"trl-{a['mode']}"),
        beta=BETA,
        loss_type=["sigmoid"],
        precompute_ref_log_probs=True,
        max_length=a["seq"],
        per_device_train_batch_size=a["n"] if check else MICRO,
        gradient_accumulation_steps=1 if check else ACCUM,
        train_sampling_strategy="sequential",
        learning_rate=LR,
        weight_decay=0.1,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_steps=1 if check else a["steps"],
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
    trainer = PreTokenizedDPO(
        model=model, ref_model=ref, args=cfg, train_dataset=Dataset.from_list(pairs), processing_class=tok
    )
    if check:
        trl_check(a, trainer, model, torch)
        return
    rec = {"t_begin": None, "t_end": [], "tokens": [], "losses": []}

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            rec["t_begin"] = rec["t_begin"] or time.time()

        def on_step_end(self, args, state, control, **kw):
            rec["t_end"].append(time.time())
            rec["tokens"].append(trainer.tokens - sum(rec["tokens"]))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                rec["losses"].append(logs["loss"])

    trainer.add_callback(Clock())
    trainer.train()
    rec["ref_pass_s"] = trainer.ref_pass_s
    rec["settings"] = {
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "attn_implementation": model.config._attn_implementation,
        "precompute_ref_log_probs": cfg.precompute_ref_log_probs,
        "loss_type": cfg.loss_type,
    }
    Path(a["out"]).write_text(json.dumps(rec))


def trl_check(a: dict, trainer, model, torch) -> None:
    """TRL's first step on the n pairs as one batch: its loss (compute_loss), backward, every gradient; per-pair
    policy log-probs (TRL's own ``compute_ref_log_probs`` on the policy) and the precomputed reference's."""
    from safetensors.torch import save_file

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(a["n"])])
    model.train()
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    save_file({n: p.grad.contiguous() for n, p in model.named_parameters()}, a["grads"])
    with torch.no_grad():
        pc, pr = trainer.compute_ref_log_probs(model, batch)
    rc, rr = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    beta = trainer.beta
    out = {
        "loss": float(loss),
        "policy": torch.cat([pc, pr]).tolist(),
        "reference": torch.cat([rc, rr]).tolist(),
        "chosen_rewards": (beta * (pc - rc)).tolist(),
        "rejected_rewards": (beta * (pr - rr)).tolist(),
        "logged": {k: v[-1] for k, v in trainer._metrics["train"].items() if k.startswith(("rewards", "logps"))},
    }
    if not math.isfinite(out["loss"]):
        raise SystemExit(f"TRL's first-step loss is {out['loss']}")
    Path(a["out"]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()

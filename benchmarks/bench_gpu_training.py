"""Benchmark real-size training on one CUDA GPU: Pythia-410M- and BLOOM-560M-shaped models, bf16, ZeRO-2 / ZeRO-3 /
ZeRO-3 + LoRA, packed 2048-token rows of the bundled Dolly+OASST data; then the packed-equals-alone check on the GPU.

Each (kind, config) run is a stage YAML (random init from config, ``model.tiny`` at the real shape) launched as
``deepspeed --num_gpus 1 training/run.py --config ...``; its ``logs/metrics.jsonl`` gives, after the warm-up
steps, the median step time, mean tokens/s (real, non-padding tokens), MFU and peak GPU memory (allocated).
The tokenized data is cached in the work dir. Results: a table on stdout and ``<work>/results.json``.

    .venv/bin/python benchmarks/bench_gpu_training.py [--steps 30] [--work DIR] [--kinds pythia,bloom]
        [--configs zero2,zero3,zero3_lora] [--attn sdpa,eager,flash_attention_2,flex_attention]
        [--micro-batch 4] [--peak-tflops 989] [--gradient-checkpointing]
    .venv/bin/python benchmarks/bench_gpu_training.py --tiny     # CPU smoke run of every code path (minutes)

Vocab: models built from config take the data tokenizer's vocab (gpt-neox-20b, 50277 rounded to 50304), so the
"bloom" model has 50304 embedding rows, not BLOOM-560M's 250880; the real parameter count of each model is
reported and used for MFU.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    "pythia": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 4096},
    "bloom": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16},
}  # BLOOM's MLP is always 4 x hidden
TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 4}
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
DS = "training/configs/ds/"
GPU_CONFIGS = {
    "zero2": (DS + "zero2_bf16.json", False),
    "zero3": (DS + "zero3_bf16.json", False),
    "zero3_lora": (DS + "zero3_bf16.json", True),
}
CPU_CONFIGS = {
    "zero2": (DS + "cpu.json", False),
    "zero3": (DS + "zero3_offload_bf16.json", False),
    "zero3_lora": (DS + "zero3_offload_bf16.json", True),
}
# bf16 dense tensor-core peaks (no sparsity); the first name found in torch.cuda.get_device_name() wins
PEAK_BF16 = [
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
]


def log(msg: str) -> None:
    print(msg, flush=True)


def prepare_data(work: Path, seq: int, packing: str) -> Path:
    """Dolly + OASST through data_prep and tokenization_prep, once per (length, packing): cached in ``work``."""
    from data_prep.pipeline import prepare_oa_dolly
    from tokenization_prep.pipeline import MANIFEST, PipelineConfig, run_pipeline

    out = work / f"data_{seq}_{packing.replace('::', '_')}"
    if (out / MANIFEST).is_file():  # written last: its presence means a complete output
        return out
    work.mkdir(parents=True, exist_ok=True)
    src = work / "oa_dolly.jsonl"
    if not src.is_file():
        prepare_oa_dolly(
            src,
            str(ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz"),
            str(ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl"),
        )
    t0 = time.perf_counter()
    run_pipeline(
        PipelineConfig(
            input_path=str(src),
            output_path=str(out),
            pretrained_tokenizer=str(ROOT / "data/tokenizers/gpt-neox-20b"),
            max_seq_length=seq,
            input_packing_config=packing,
            shuffle="on_RAM",
            num_training_splits=1,
            overwrite_output_path=True,
        )
    )
    log(f"tokenized {src.name} at {seq} ({packing}) into {out} in {time.perf_counter() - t0:.0f} s")
    return out


def param_count(kind: str, shape: dict, vocab: int, seq: int) -> int:
    """Parameters of the model the stage builds (tied weights once), counted on the meta device."""
    from training.config import ModelConfig, TinyShape
    from training.loading import count_params
    from training.modeling import MODEL_CLASSES, tiny_config

    mc = ModelConfig(kind=kind, tiny=TinyShape(**shape))
    return count_params(MODEL_CLASSES[kind], tiny_config(mc, vocab, seq))[0]


def peak_flops(override_tflops: float | None) -> tuple[float | None, str]:
    import torch

    if override_tflops:
        return override_tflops * 1e12, "--peak-tflops"
    if not torch.cuda.is_available():
        return None, "cpu"
    name = torch.cuda.get_device_name()
    for key, flops in PEAK_BF16:
        if key.lower() in name.lower():
            return flops, name
    return None, name  # unknown GPU: MFU is left out unless --peak-tflops is given


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_one(name: str, kind: str, shape: dict, ds: str, lora: bool, attn: str, data: Path, work: Path, args) -> dict:
    """Write the stage YAML, train it in a subprocess, return the summary of its metrics.jsonl."""
    import yaml

    run_dir = work / "runs" / name
    stage = {
        "name": name,
        "data_dir": str(data),
        "output_dir": str(run_dir),
        "model": {"kind": kind, "tiny": shape},
        "deepspeed": ds,
        "epochs": 1000,
        "max_steps": args.steps,
        "micro_batch_size": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "lr": 1e-4,
        "log_every": 1,
        "save_every": 0,
        "eval_every": 0,
        "attn_implementation": attn,
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    if lora:
        stage["lora"] = LORA
    cfg = work / "runs" / f"{name}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(stage, sort_keys=False))
    if args.tiny:  # one CPU process: training.run sets the rendezvous variables itself
        cmd = [sys.executable, "-m", "training.run", "--config", str(cfg)]
    else:
        launcher = str(Path(sys.executable).with_name("deepspeed"))
        cmd = [launcher, "--num_gpus", "1", "--master_port", str(free_port()), "training/run.py", "--config", str(cfg)]
    out_log = work / "runs" / f"{name}.log"
    log(f"[{name}] {' '.join(cmd)}  (output: {out_log})")
    t0 = time.perf_counter()
    with open(out_log, "w") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=args.env).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = out_log.read_text(errors="replace").strip().splitlines()[-15:]
        log(f"[{name}] FAILED (exit {rc}) after {wall:.0f} s; last lines:\n    " + "\n    ".join(tail))
        return {"error": f"exit {rc}", "log": str(out_log)}
    recs = [json.loads(x) for x in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "step_s" in r]
    warm = max(1, min(5, len(recs) // 4))  # the first steps include allocator growth, kernel selection, JIT
    timed = recs[warm:] or recs
    mem = [r["peak_gpu_mem_gb"] for r in recs if "peak_gpu_mem_gb" in r]
    log(f"[{name}] done in {wall:.0f} s ({len(recs)} steps, {warm} warm-up not timed)")
    return {
        "steps_timed": len(timed),
        "warmup_steps": warm,
        "step_s": statistics.median(r["step_s"] for r in timed),
        "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in timed),
        "peak_gpu_mem_gb": max(mem) if mem else None,
        "first_loss": recs[0]["loss"],
        "last_loss": recs[-1]["loss"],
        "wall_s": wall,
        "log": str(out_log),
    }


def packing_check(kind: str, shape: dict, data: Path, device: str) -> dict:
    """Logits of the packed row with the most articles vs each article alone, in fp32 and in bf16 (just reported)."""
    import h5py
    import numpy as np
    import torch

    from training.config import ModelConfig, TinyShape
    from training.data import load_data, row_features
    from training.modeling import build_model, packed_forward

    torch.set_float32_matmul_precision("highest")  # fp32 really fp32 (no TF32) for the fp32 comparison
    loaded = load_data(data)
    meta = {
        "max_seq_length": loaded.meta.max_seq_length,
        "vocab_size": loaded.meta.vocab_size,
        "embedding_rows": loaded.embedding_rows,
    }
    with h5py.File(loaded.splits["train"][0]) as f:
        types = f["token_type_ids"][:]
        row = int(np.argmax((types == 3).sum(axis=1)))  # the row holding the most articles
        ids, types = f["input_ids"][row], types[row]
    ends = np.flatnonzero(types == 3)
    spans = list(zip(np.concatenate([[0], ends[:-1] + 1]), ends + 1))
    batch = {k: v[None].to(device) for k, v in row_features(ids, types, 0.0).items()}
    model = (
        build_model(
            ModelConfig(kind=kind, tiny=TinyShape(**shape)), meta["vocab_size"], meta["max_seq_length"], seed=0
        )[0]
        .eval()
        .to(device)
    )
    res = {"articles": len(spans), "last_article_start": int(spans[-1][0]), "row_tokens": int(ends[-1] + 1)}
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16):
            model.to(dtype)
            packed = packed_forward(model, batch)[0].float()
            gaps = []
            for lo, hi in spans:
                alone = model(input_ids=batch["input_ids"][:, lo:hi], use_cache=False).logits[0].float()
                gaps.append((packed[lo:hi] - alone).abs().max().item())
            tag = str(dtype).removeprefix("torch.")
            res[tag] = {
                "max_dlogit": max(gaps),
                "max_dlogit_last_article": gaps[-1],
                "max_abs_logit": packed[: spans[-1][1]].abs().max().item(),
            }
            if dtype == torch.float32 and len(spans) > 1:  # sanity: without the block mask article 2 sees article 1
                lo, hi = spans[1]
                naive = model(input_ids=batch["input_ids"][:, :hi], use_cache=False).logits[0, lo:hi].float()
                alone = model(input_ids=batch["input_ids"][:, lo:hi], use_cache=False).logits[0].float()
                res["float32_no_mask_article2"] = (naive - alone).abs().max().item()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 30; 3 with --tiny)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_gpu_training")
    ap.add_argument("--kinds", default="pythia,bloom")
    ap.add_argument("--configs", default="zero2,zero3,zero3_lora")
    ap.add_argument(
        "--attn",
        default="sdpa",
        help="attention implementations to run, comma-separated "
        "(one that is not installed, or cannot isolate articles on a kind, is reported and skipped)",
    )
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--micro-batch", type=int, default=4, help="rows of --seq tokens per step (no accumulation)")
    ap.add_argument("--packing", default="bfd::drop")
    ap.add_argument("--peak-tflops", type=float, default=None, help="bf16 dense peak per GPU (default: detected)")
    ap.add_argument("--no-check", action="store_true", help="skip the packed-equals-alone check")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode: hidden 64, 2 layers, length 128, 3 steps")
    args = ap.parse_args()
    import torch

    if not args.tiny and not torch.cuda.is_available():
        print(
            "bench_gpu_training: no CUDA GPU here (torch.cuda.is_available() is False); use --tiny for a CPU smoke run"
        )
        return 1
    kinds, confs = args.kinds.split(","), args.configs.split(",")
    table = CPU_CONFIGS if args.tiny else GPU_CONFIGS
    bad = [k for k in kinds if k not in SHAPES] + [c for c in confs if c not in table]
    if bad:
        ap.error(f"unknown kind/config {bad}: kinds are {list(SHAPES)}, configs {list(table)}")
    args.steps = args.steps or (3 if args.tiny else 30)
    seq = 128 if args.tiny else 2048
    env = dict(os.environ)
    if not args.tiny and env.get("DS_ACCELERATOR", "cuda") != "cuda":
        log(f"note: ignoring DS_ACCELERATOR={env.pop('DS_ACCELERATOR')} for the GPU runs")
    if args.tiny:
        env.setdefault("DS_ACCELERATOR", "cpu")
    args.env = env
    peak, device_name = peak_flops(args.peak_tflops)
    data = prepare_data(args.work, seq, args.packing)
    from training.data import PackedDataset

    train = PackedDataset(data, "train", 0.0)
    vocab, seq_len = train.data.embedding_rows, train.seq_len
    log(f"data: {len(train)} packed rows of {seq_len} tokens ({args.packing}), tokenizer vocab {vocab}")
    shapes = {k: (TINY if args.tiny else SHAPES[k]) for k in kinds}
    params = {k: param_count(k, shapes[k], vocab, seq) for k in kinds}
    for k in kinds:
        log(f"{k}: {shapes[k]} vocab {-(-vocab // 64) * 64} -> {params[k] / 1e6:.1f}M parameters")
    if "bloom" in kinds and not args.tiny:
        real = param_count("bloom", SHAPES["bloom"], 250880, seq)
        log(
            f"note: real BLOOM-560M has vocab 250880 ({real / 1e6:.1f}M parameters); 'bloom' here uses the data's "
            f"tokenizer vocab, so its embedding (and MFU's N) is {(real - params['bloom']) / 1e6:.0f}M smaller"
        )

    from training.attention import check_attention
    from training.config import ConfigError

    results = []
    for kind in kinds:
        for conf in confs:
            for attn in args.attn.split(","):
                try:
                    check_attention(kind, attn)
                except ConfigError as exc:
                    log(f"[{kind} {attn}] skipped: {exc}")
                    continue
                ds, lora = table[conf]
                name = f"{kind}_{conf}_{attn}" + ("_tiny" if args.tiny else "")
                r = run_one(name, kind, shapes[kind], ds, lora, attn, data, args.work, args)
                r.update(
                    run=name,
                    kind=kind,
                    config=conf,
                    attn=attn,
                    deepspeed=ds,
                    lora=LORA if lora else None,
                    params=params[kind],
                    seq=seq,
                    micro_batch=args.micro_batch,
                )
                # MFU = 6 N tokens/s / peak, N = every parameter of the model (embeddings included). 6N per token
                # is forward 2N + backward 4N; it leaves out attention's score/value matmuls (~12 x layers x hidden x
                # seq per token; flash kernels skip cross-article blocks) and counts the embedding lookup as a
                # matmul. LoRA runs use the same 6N (full-training-equivalent throughput): the frozen base skips
                # weight gradients, so the hardware does ~4N per token and its real utilization is ~2/3 of the MFU.
                # tokens/s counts real tokens only, so padding left by packing is not credited.
                if "tokens_per_s" in r and peak:
                    r["mfu"] = 6 * params[kind] * r["tokens_per_s"] / peak
                results.append(r)

    checks = {}
    if not args.no_check:
        dev = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
        for kind in kinds:
            try:
                checks[kind] = packing_check(kind, shapes[kind], data, dev)
            except Exception as exc:  # report, keep the timing results
                checks[kind] = {"error": f"{type(exc).__name__}: {exc}"}

    if args.tiny:
        mode = "CPU smoke run (--tiny)"
    else:
        mode = (
            f"{device_name}, bf16 peak {peak / 1e12:.0f} TFLOPS"
            if peak
            else f"{device_name} (unknown peak: give --peak-tflops for MFU)"
        )
    log(f"\n{mode}; {args.steps} steps/run, micro-batch {args.micro_batch} x {seq} tokens, 1 process")
    log(
        f"{'run':<40}{'deepspeed':<26}{'params':>9}{'step s':>9}{'tokens/s':>11}{'MFU':>7}{'peak GB':>9}"
        f"{'loss first->last':>19}"
    )
    for r in results:
        if "error" in r:
            log(
                f"{r['run']:<40}{Path(r['deepspeed']).name:<26}{r['params'] / 1e6:>8.1f}M  FAILED ({r['error']}, "
                f"see {r['log']})"
            )
            continue
        mfu = f"{r['mfu']:.1%}" if "mfu" in r else "n/a"
        mem = f"{r['peak_gpu_mem_gb']:.1f}" if r["peak_gpu_mem_gb"] is not None else "n/a"
        log(
            f"{r['run']:<40}{Path(r['deepspeed']).name + (' +LoRA' if r['lora'] else ''):<26}"
            f"{r['params'] / 1e6:>8.1f}M{r['step_s']:>9.3f}{r['tokens_per_s']:>11,.0f}{mfu:>7}{mem:>9}"
            f"{r['first_loss']:>10.3f} ->{r['last_loss']:>6.3f}"
        )
    log(
        "MFU = 6 x params x tokens/s / peak (LoRA rows: same formula; hardware work is ~4N/token, so x2/3); "
        "peak GB = torch.cuda.max_memory_allocated"
    )
    first = {(r["kind"], r["config"], r["attn"]): r["first_loss"] for r in results if "first_loss" in r}
    for (kind, conf, attn), loss in first.items():  # same data and seed: another step-1 loss means another init
        base = first.get((kind, "zero2", attn))
        if conf != "zero2" and base is not None and abs(loss - base) > 1:
            log(
                f"note: {kind} {conf} starts at loss {loss:.1f}, zero2 at {base:.1f}: the random init under "
                "deepspeed.zero.Init is not the model's _init_weights"
            )
    for kind, c in checks.items():
        if "error" in c:
            log(f"packed vs alone, {kind}: FAILED {c['error']}")
            continue
        log(
            f"packed vs alone, {kind} ({c['articles']} articles in {c['row_tokens']} tokens, last from position "
            f"{c['last_article_start']}): max |dlogit| fp32 {c['float32']['max_dlogit']:.2e}, bf16 "
            f"{c['bfloat16']['max_dlogit']:.2e} (last article {c['bfloat16']['max_dlogit_last_article']:.2e}; "
            f"|logit| up to {c['bfloat16']['max_abs_logit']:.1f}); no mask: {c.get('float32_no_mask_article2', 0):.2e}"
        )
    out = args.work / ("results_tiny.json" if args.tiny else "results.json")
    out.write_text(
        json.dumps(
            {
                "device": device_name,
                "peak_flops": peak,
                "vocab_size": vocab,
                "steps": args.steps,
                "runs": results,
                "packing_check": checks,
            },
            indent=2,
        )
    )
    log(f"results: {out}")
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark real-size training on one CUDA GPU: Pythia-410M- and BLOOM-560M-shaped models, bf16, ZeRO-2 / ZeRO-3 /
ZeRO-3 + LoRA, packed 2048-token rows of the bundled Dolly+OASST data, per attention implementation; and first the
packed-equals-alone check on the GPU for each attention implementation (fp32 gap within --check_tol, else failure).

Each (kind, config, attention) run is a stage YAML (random init from config, ``model.tiny`` at the real shape)
trained in a subprocess: ``python -m training run`` (one GPU needs no launcher; ``--launcher deepspeed`` uses the
``deepspeed`` beside this Python or on PATH). Its ``logs/metrics.jsonl`` gives, after the warm-up steps, the median
step time, mean tokens/s (real, non-padding tokens), peak GPU memory (allocated) and MFU. MFU counts model FLOPs
per trained row from its own articles (``benchmarks/train_flops.py``: 6 x non-embedding parameters x real tokens
+ attention 12 x layers x hidden x sum n(n+1)/2 over articles + LM head 6 x hidden x vocab on supervised tokens
only), the rows of each timed step replayed from the trainer's sampler; LoRA rows also give the hardware count.
The tokenized data is cached in the work dir. Results: a table on stdout and ``<work>/results.json``.

Optimizer: DeepSpeed's FusedAdam JIT-compiles CUDA code and needs nvcc. ``--adam torch`` (what ``auto`` picks when
torch finds no CUDA compiler, and always on the CPU) trains each DeepSpeed config through a copy in ``<work>/ds/``
whose optimizer params add ``"torch_adam": true``: for type AdamW DeepSpeed then builds ``torch.optim.AdamW``
(``DeepSpeedEngine.get_optimizer_configuration``). The bundled configs are never edited.

    .venv/bin/python benchmarks/bench_gpu_training.py [--steps 30] [--warmup N] [--work DIR] [--kinds pythia,bloom]
        [--configs zero2,zero3,zero3_lora] [--attn sdpa,eager,flash_attention_2,flex_attention] [--adam auto]
        [--micro_batch_size 4] [--peak_tflops 989] [--gradient_checkpointing] [--budget_s S] [--results FILE]
    .venv/bin/python benchmarks/bench_gpu_training.py --tiny     # CPU: every code path at hidden 64, length 128

``--tiny`` runs the same DeepSpeed configs (bf16, no offload) with torch's AdamW on DeepSpeed's CPU accelerator.
Vocab: models built from config take the data tokenizer's vocab (gpt-neox-20b, 50277 rounded to 50304), so the
"bloom" model has 50304 embedding rows, not BLOOM-560M's 250880.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from packing_check import packing_check
from train_flops import LEGEND, ZERO, flops, model_shape, step_rows, steps_counts

ROOT = Path(__file__).resolve().parents[1]
SEED = 42  # the stages' seed: the FLOP count replays the rows the trainer draws with it

SHAPES = {
    "pythia": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16, "intermediate_size": 4096},
    "bloom": {"hidden_size": 1024, "num_layers": 24, "num_heads": 16},
}  # BLOOM's MLP is always 4 x hidden
TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 4}
LORA = {"r": 8, "alpha": 16, "dropout": 0.05}
DS = "training/configs/ds/"
CONFIGS = {
    "zero2": (DS + "zero2_bf16.json", False),
    "zero3": (DS + "zero3_bf16.json", False),
    "zero3_lora": (DS + "zero3_bf16.json", True),
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


def budget(phase: str, t0: float, t_start: float) -> None:
    """A time line per phase: gpu_check.sh must fit its lease, so where the minutes go is part of the output."""
    now = time.perf_counter()
    log(f"budget: {phase} {now - t0:.0f} s (bench total {now - t_start:.0f} s)")


def prepare_data(work: Path, seq: int, packing: str, dolly_records: int | None = None) -> Path:
    """Dolly + OASST through data_prep and tokenization_prep, once per (length, packing): cached in ``work``.

    ``dolly_records``: only the first N Dolly records (``--tiny``: a few steps need a few hundred rows, not all 15k)."""
    import gzip

    from data_prep.jobs import prepare_oa_dolly
    from tokenization_prep.pipeline import run_pipeline
    from tokenization_prep.schema import MANIFEST
    from tokenization_prep.settings import PipelineConfig

    out = work / f"data_{seq}_{packing.replace('::', '_')}{f'_dolly{dolly_records}' if dolly_records else ''}"
    if (out / MANIFEST).is_file():  # written last: its presence means a complete output
        return out
    work.mkdir(parents=True, exist_ok=True)
    src = work / f"oa_dolly{dolly_records or ''}.jsonl"
    if not src.is_file():
        dolly = ROOT / "data/samples/dolly/databricks-dolly-15k.jsonl.gz"
        if dolly_records:
            with gzip.open(dolly, "rt", encoding="utf-8") as fh:
                head = [line for _, line in zip(range(dolly_records), fh)]
            dolly = work / f"dolly_first_{dolly_records}.jsonl"
            dolly.write_text("".join(head))
        prepare_oa_dolly(src, str(dolly), str(ROOT / "data/samples/oasst1/oasst1_validation_en.jsonl"))
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


def peak_flops(override_tflops: float | None) -> tuple[float | None, str]:
    import torch

    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if override_tflops:
        return override_tflops * 1e12, f"{name} (peak from --peak_tflops)"
    for key, peak in PEAK_BF16:
        if key.lower() in name.lower():
            return peak, name
    return None, name  # unknown GPU (or the CPU): MFU is left out unless --peak_tflops is given


def pick_adam(choice: str, tiny: bool) -> tuple[str, str]:
    """("fused" or "torch", why): FusedAdam needs nvcc to JIT-compile, torch's AdamW needs nothing."""
    if choice != "auto":
        return choice, "--adam"
    if tiny:
        return "torch", "CPU run (no op to compile)"
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = Path(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    if nvcc and nvcc.is_file():
        return "fused", f"nvcc at {nvcc}"
    return "torch", "no CUDA compiler found (torch CUDA_HOME / nvcc)"


def ds_config(path: str, work: Path, adam: str) -> str:
    """The bundled DeepSpeed config, or with ``adam == "torch"`` a copy in ``<work>/ds`` using torch's AdamW."""
    if adam == "fused":
        return path
    ds = json.loads((ROOT / path).read_text())
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}}).setdefault("params", {})["torch_adam"] = True
    out = work / "ds" / f"{Path(path).stem}_torch_adam.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(ds, indent=1))
    return str(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(cfg: Path, args) -> list[str]:
    """``deepspeed`` beside this Python, else on PATH (``--launcher deepspeed``/``auto`` on a GPU), else one
    process of ``python -m training run`` (it sets the rendezvous variables itself)."""
    if args.launcher != "python" and not args.tiny:
        beside = Path(sys.executable).with_name("deepspeed")
        found = str(beside) if beside.is_file() else shutil.which("deepspeed")
        if found:
            port = str(free_port())
            return [found, "--num_gpus", "1", "--master_port", port, "training/run.py", "--config", str(cfg)]
        if args.launcher == "deepspeed":
            raise SystemExit("--launcher deepspeed: no deepspeed launcher beside sys.executable or on PATH")
    return [sys.executable, "-m", "training", "run", "--config", str(cfg)]


def run_one(name: str, kind: str, shape: dict, ds: str, lora: bool, attn: str, data: Path, args) -> tuple[dict, list]:
    """Write the stage YAML, train it in a subprocess; return its summary and the timed metrics records."""
    import yaml

    run_dir = args.work / "runs" / name
    stage = {
        "name": name,
        "data_dir": str(data),
        "output_path": str(run_dir),
        "model": {"kind": kind, "tiny": shape},
        "deepspeed": ds,
        "epochs": 1000,
        "max_steps": args.steps,
        "micro_batch_size": args.micro_batch_size,
        "gradient_accumulation_steps": 1,
        "lr": 1e-4,
        "seed": SEED,
        "prompt_loss_weight": 0.0,
        "log_every": 1,
        "save_every": 0,
        "eval_every": 0,
        "attn_implementation": attn,
        "gradient_checkpointing": args.gradient_checkpointing,
    }
    if lora:
        stage["lora"] = LORA
    cfg = args.work / "runs" / f"{name}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(stage, sort_keys=False))
    cmd = train_command(cfg, args)
    out_log = args.work / "runs" / f"{name}.log"
    log(f"[{name}] {' '.join(cmd)}  (output: {out_log})")
    t0 = time.perf_counter()
    with open(out_log, "w") as fh:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=args.env).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        tail = out_log.read_text(errors="replace").strip().splitlines()[-15:]
        log(f"[{name}] FAILED (exit {rc}) after {wall:.0f} s; last lines:\n    " + "\n    ".join(tail))
        return {"error": f"exit {rc}", "log": str(out_log), "wall_s": wall}, []
    recs = [json.loads(x) for x in (run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "step_s" in r]
    # the first steps include allocator growth, kernel selection, JIT
    warm = args.warmup if args.warmup is not None else max(1, min(5, len(recs) // 4))
    timed = recs[warm:] or recs
    mem = [r["peak_gpu_mem_gb"] for r in recs if "peak_gpu_mem_gb" in r]
    log(f"[{name}] done in {wall:.0f} s ({len(recs)} steps, {warm} warm-up not timed)")
    shutil.rmtree(run_dir / "final", ignore_errors=True)  # 1 GB a real-size run; the metrics are what counts
    summary = {
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
    return summary, timed


def mfu_summary(timed: list, counts: list, shape, peak: float | None, lora: bool) -> dict:
    """Model FLOPs of the timed steps (their rows replayed) over their summed step time; checked against the
    real tokens the trainer logged for the same steps, so a drifted replay is an error, not a wrong MFU."""
    c = sum((counts[r["step"] - 1] for r in timed), ZERO)
    secs = sum(r["step_s"] for r in timed)
    logged = sum(r["tokens_per_s"] * r["step_s"] for r in timed)  # log_every 1: a step's real tokens
    f = flops(c, shape)
    out = {
        "formula": LEGEND,
        "timed_s": secs,
        "counts": asdict(c),
        "logged_real_tokens": logged,
        "flops": f,
        "flops_per_real_token": {k: v / max(c.real, 1) for k, v in f.items()},
        "non_embedding_params": shape.non_embedding,
        "params": shape.total,
    }
    if abs(logged - c.real) > 1e-3 * c.real + 1:
        out["error"] = f"replayed rows hold {c.real} real tokens, the trainer logged {logged:.0f}"
    if peak:
        out["mfu"] = f["total"] / secs / peak
        out["mfu_6N_all_params"] = 6 * shape.total * c.real / secs / peak  # the old formula, for comparison
        if lora:
            out["mfu_hw"] = f["hw_lora"] / secs / peak
    return out


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 30; 3 with --tiny)")
    ap.add_argument("--warmup", type=int, default=None, help="first steps not timed (default: steps/4, 1..5)")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench_gpu_training")
    ap.add_argument("--results", type=Path, default=None, help="also write the results JSON here")
    ap.add_argument("--kinds", default="pythia,bloom")
    ap.add_argument("--configs", default="zero2,zero3,zero3_lora")
    ap.add_argument(
        "--attn",
        default="sdpa",
        help="attention implementations to run, comma-separated "
        "(one that is not installed, or cannot isolate articles on a kind, is reported and skipped)",
    )
    ap.add_argument("--adam", choices=("auto", "fused", "torch"), default="auto", help="see the module docstring")
    ap.add_argument("--launcher", choices=("auto", "python", "deepspeed"), default="auto")
    ap.add_argument("--gradient_checkpointing", action="store_true")
    ap.add_argument("--micro_batch_size", type=int, default=4, help="rows of --seq tokens per step (no accumulation)")
    ap.add_argument("--packing", default="bfd::drop")
    ap.add_argument("--peak_tflops", type=float, default=None, help="bf16 dense peak per GPU (default: detected)")
    ap.add_argument("--no_check", action="store_true", help="skip the packed-equals-alone check")
    ap.add_argument("--check_attn", default=None, help="attention implementations to check (default: --attn)")
    ap.add_argument("--check_tol", type=float, default=1e-3, help="max fp32 |dlogit| packed vs alone")
    ap.add_argument("--budget_s", type=float, default=None, help="start no training run after this many seconds")
    ap.add_argument("--tiny", action="store_true", help="CPU smoke mode: hidden 64, 2 layers, length 128, 3 steps")
    args = ap.parse_args(argv)
    bad = [k for k in args.kinds.split(",") if k not in SHAPES]
    bad += [c for c in args.configs.split(",") if c not in CONFIGS]
    if bad:
        ap.error(f"unknown kind/config {bad}: kinds are {list(SHAPES)}, configs {list(CONFIGS)}")
    args.steps = args.steps or (3 if args.tiny else 30)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    import torch

    if not args.tiny and not torch.cuda.is_available():
        log("bench_gpu_training: no CUDA GPU here (torch.cuda.is_available() is False); use --tiny for a CPU smoke run")
        return 1
    kinds, confs, attns = args.kinds.split(","), args.configs.split(","), args.attn.split(",")
    seq = 128 if args.tiny else 2048
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))  # training/run.py
    if not args.tiny and env.get("DS_ACCELERATOR", "cuda") != "cuda":
        log(f"note: ignoring DS_ACCELERATOR={env.pop('DS_ACCELERATOR')} for the GPU runs")
    if args.tiny:
        env.setdefault("DS_ACCELERATOR", "cpu")
    args.env = env
    adam, why = pick_adam(args.adam, args.tiny)
    log(f"optimizer: {'DeepSpeed FusedAdam' if adam == 'fused' else 'torch.optim.AdamW (torch_adam)'} ({why})")
    peak, device_name = peak_flops(args.peak_tflops)
    data = prepare_data(args.work, seq, args.packing, 2000 if args.tiny else None)
    budget("data", t_start, t_start)
    from common.errors import ConfigError
    from training.attention import check_attention
    from training.data import PackedDataset

    train = PackedDataset(data, "train", 0.0)
    vocab = train.data.embedding_rows
    log(f"data: {len(train)} packed rows of {train.seq_len} tokens ({args.packing}), tokenizer vocab {vocab}")
    counts = steps_counts(train, step_rows(len(train), args.steps, args.micro_batch_size, SEED))
    shapes = {k: (TINY if args.tiny else SHAPES[k]) for k in kinds}
    sizes = {k: model_shape(k, shapes[k], vocab, seq) for k in kinds}
    for k in kinds:
        s = sizes[k]
        log(
            f"{k}: {shapes[k]} head rows {s.head_rows}: {s.total / 1e6:.1f}M params, {s.non_embedding / 1e6:.1f}M "
            "non-embedding"
        )

    checks, skipped, t_checks = {}, [], time.perf_counter()
    dev = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    for kind in kinds if not args.no_check else []:
        for attn in (args.check_attn or args.attn).split(","):
            key = f"{kind}_{attn}"
            try:
                check_attention(kind, attn, training=False)
                checks[key] = packing_check(kind, shapes[kind], data, dev, attn, args.check_tol)
            except ConfigError as exc:
                skipped.append(f"check {key}: {exc}")
            except Exception as exc:  # report, go on with the timing runs
                checks[key] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            log(f"[check {key}] {checks.get(key, 'skipped')}")

    budget("packed-equals-alone checks", t_checks, t_start)
    results = []
    # under a time budget the runs that matter most start first: every config with the first attention, then every
    # attention with the first config, then the rest
    order = sorted(
        ((kind, conf, attn) for kind in kinds for conf in confs for attn in attns),
        key=lambda x: 0 if x[2] == attns[0] else 1 if x[1] == confs[0] else 2,
    )
    for kind, conf, attn in order:
        name = f"{kind}_{conf}_{attn}" + ("_tiny" if args.tiny else "")
        try:
            check_attention(kind, attn)
        except ConfigError as exc:
            skipped.append(f"{name}: {exc}")
            continue
        if args.budget_s and time.perf_counter() - t_start > args.budget_s:
            skipped.append(f"{name}: time budget ({args.budget_s:.0f} s) spent")
            continue
        path, lora = CONFIGS[conf]
        ds = ds_config(path, args.work, adam)
        r, timed = run_one(name, kind, shapes[kind], ds, lora, attn, data, args)
        r.update(run=name, kind=kind, config=conf, attn=attn, deepspeed=ds, lora=LORA if lora else None)
        r.update(params=sizes[kind].total, seq=seq, micro_batch=args.micro_batch_size)
        if timed:
            r["flops"] = mfu_summary(timed, counts, sizes[kind], peak, lora)
            r["mfu"] = r["flops"].get("mfu")
            if "error" in r["flops"]:
                r["error"] = r["flops"]["error"]
        results.append(r)
    report(results, checks, skipped, args, peak, device_name, seq)
    out = args.work / ("results_tiny.json" if args.tiny else "results.json")
    doc = {"device": device_name, "peak_flops": peak, "optimizer": adam, "vocab_size": vocab, "steps": args.steps}
    doc.update(mfu_formula=LEGEND, runs=results, packing_check=checks, skipped=skipped)
    for path in filter(None, [out, args.results]):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2))
    log(f"results: {out}" + (f" and {args.results}" if args.results else ""))
    failed = [r["run"] for r in results if "error" in r] + [k for k, c in checks.items() if not c.get("ok")]
    if failed:
        log(f"FAILED: {', '.join(failed)}")
        return 1
    return 3 if any("time budget" in s for s in skipped) else 0  # 3: passed what ran, but not everything ran


def report(results: list, checks: dict, skipped: list, args, peak, device_name: str, seq: int) -> None:
    """The results table, the packed-equals-alone lines and what was skipped, on stdout."""
    mode = f"{device_name}, bf16 peak {peak / 1e12:.0f} TFLOPS" if peak else f"{device_name} (no peak: no MFU)"
    log(f"\n{mode}; {args.steps} steps/run, micro-batch {args.micro_batch_size} x {seq} tokens, 1 process")
    log(f"{'run':<36}{'deepspeed':<30}{'step s':>8}{'tokens/s':>11}{'MFU':>7}{'6N MFU':>8}{'peak GB':>9}{'loss':>16}")
    for r in results:
        name = Path(r["deepspeed"]).name + (" +LoRA" if r["lora"] else "")
        if "step_s" not in r:
            log(f"{r['run']:<36}{name:<30}  FAILED ({r['error']}, see {r['log']})")
            continue
        f = r["flops"]
        mfu = f"{f['mfu']:.1%}" if "mfu" in f else "n/a"
        old = f"{f['mfu_6N_all_params']:.1%}" if "mfu" in f else "n/a"
        mem = f"{r['peak_gpu_mem_gb']:.1f}" if r["peak_gpu_mem_gb"] is not None else "n/a"
        log(
            f"{r['run']:<36}{name:<30}{r['step_s']:>8.3f}{r['tokens_per_s']:>11,.0f}{mfu:>7}{old:>8}{mem:>9}"
            f"{r['first_loss']:>8.3f}->{r['last_loss']:.3f}" + (f"  ERROR {r['error']}" if "error" in r else "")
        )
        per = f["flops_per_real_token"]
        log(
            f"{'':<36}FLOPs/real token: dense {per['dense']:.3g} + attention {per['attention']:.3g} "
            f"+ head {per['head']:.3g} = {per['total']:.3g}"
            + (f"; LoRA hardware MFU {f['mfu_hw']:.1%}" if "mfu_hw" in f else "")
        )
    log(f"MFU: {LEGEND}. 6N MFU: the old 6 x all params x tokens/s. peak GB: torch.cuda.max_memory_allocated")
    first = {(r["kind"], r["config"], r["attn"]): r["first_loss"] for r in results if "first_loss" in r}
    for (kind, conf, attn), loss in first.items():  # same data and seed: another step-1 loss means another init
        base = first.get((kind, "zero2", attn))
        if conf != "zero2" and base is not None and abs(loss - base) > 1:
            log(
                f"note: {kind} {conf} starts at loss {loss:.1f}, zero2 at {base:.1f}: the random init under "
                "deepspeed.zero.Init is not the model's _init_weights"
            )
    for key, c in checks.items():
        if "error" in c:
            log(f"packed vs alone, {key}: FAILED {c['error']}")
            continue
        log(
            f"packed vs alone, {key} ({'ok' if c['ok'] else 'FAILED'}; {c['articles_checked']} of {c['articles']} "
            f"articles in {c['row_tokens']} tokens, last from {c['last_article_start']}): max |dlogit| fp32 "
            f"{c['float32']['max_dlogit']:.2e} (tol {args.check_tol:.0e}), bf16 {c['bfloat16']['max_dlogit']:.2e} "
            f"(|logit| up to {c['bfloat16']['max_abs_logit']:.1f}); no mask: {c.get('float32_no_mask_article2', 0):.2e}"
        )
    for s in skipped:
        log(f"skipped: {s}")


if __name__ == "__main__":
    sys.exit(main())

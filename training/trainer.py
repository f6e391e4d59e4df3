"""Run one training stage with DeepSpeed: seeded data order, eval, TensorBoard, checkpoints, exact resume.

The data order is a pure function of (seed, epoch), and checkpoints record the micro-step reached, so
``--resume`` continues at the exact data position: a stage killed with -9 and resumed ends with the
same weights as an uninterrupted run. Every stage ends in ``<output>/final``: a save_pretrained dir
(safetensors, tokenizer with chat template, generation config) plus ``lineage.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from data_prep.atomic import atomic_write
from training.config import ConfigError, StageConfig, deepspeed_dict
from training.data import PackedDataset, split_files
from training.modeling import apply_lora, build_model, packed_forward, weighted_loss


def check_inputs(cfg: StageConfig) -> tuple[Path, Path | None]:
    """Everything that can be wrong before training starts, as one ConfigError line."""
    data_dir = cfg.resolve(cfg.data_dir)
    if not data_dir.is_dir():
        raise ConfigError(f"data_dir {data_dir} does not exist; run tokenization_prep first")
    if not split_files(data_dir, "train"):
        raise ConfigError(f"data_dir {data_dir} holds no train_*_of_*.hdf5 files")
    if not (data_dir / "tokenizer").is_dir():
        raise ConfigError(f"data_dir {data_dir} has no tokenizer/ beside the HDF5 files; re-run tokenization_prep")
    init = cfg.resolve(cfg.init_from)
    if init is not None and not (init / "config.json").is_file():
        raise ConfigError(f"init_from {init} is not a saved model (no config.json); run the earlier stage first")
    return data_dir, init


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """This rank's row order for an epoch (the same on every run)."""
    return np.random.default_rng([seed, epoch]).permutation(n)[rank::world]


def make_scheduler(cfg: StageConfig, total_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def collate(rows: list[dict]) -> dict:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def sha256_file(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


class StageRunner:
    """Owns the engine, the data and the bookkeeping of one stage."""

    def __init__(self, cfg: StageConfig, resume: bool = False):
        self.cfg, self.resume = cfg, resume
        self.data_dir, self.init = check_inputs(cfg)
        self.out = cfg.out_dir
        self.rank = int(os.environ.get("RANK", "0"))
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.train = PackedDataset(self.data_dir, "train", cfg.prompt_loss_weight)
        self.dev = PackedDataset(self.data_dir, "dev", cfg.prompt_loss_weight) if split_files(self.data_dir, "dev") \
            else None
        meta = self.train.meta
        model = build_model(cfg.model, meta["vocab_size"], meta["max_seq_length"], self.init, cfg.seed)
        if cfg.lora:
            model = apply_lora(model, cfg.model.kind, cfg.lora)
        rows_per_step = cfg.micro_batch_size * cfg.gradient_accumulation_steps * self.world
        self.steps_per_epoch = len(self.train) // rows_per_step
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{len(self.train)} training rows cannot fill one step of {rows_per_step} rows; "
                              "lower micro_batch_size or gradient_accumulation_steps")
        total = math.ceil(cfg.epochs * self.steps_per_epoch)
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        import deepspeed  # imported late: every data and model check above runs before DeepSpeed starts

        ds_config = deepspeed_dict(cfg, self.world)
        try:
            self.engine, _, _, self.scheduler = deepspeed.initialize(
                model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config,
                lr_scheduler=make_scheduler(cfg, self.total_steps))
        except (ValueError, AssertionError, NotImplementedError) as exc:
            raise ConfigError(f"deepspeed config {cfg.deepspeed} does not run here ({str(exc).strip()}); on CPU use "
                              "ds/cpu.json or a bf16 config (fp16 needs a CUDA GPU)") from None
        self.ds_config = ds_config
        self.micro_step = 0  # micro-batches consumed, counted across epochs
        if resume:
            self._load_checkpoint()

    # ---- checkpoints ----
    def _load_checkpoint(self) -> None:
        ckpt = self.out / "checkpoints"
        if not (ckpt / "latest").is_file():
            raise ConfigError(f"--resume: no checkpoint in {ckpt}; run without --resume to start the stage")
        _, client = self.engine.load_checkpoint(str(ckpt))
        self.micro_step = client["micro_step"]
        torch.set_rng_state(client["torch_rng"])

    def save_checkpoint(self) -> None:
        step = self.engine.global_steps
        self.engine.save_checkpoint(str(self.out / "checkpoints"), tag=f"step{step}",
                                    client_state={"micro_step": self.micro_step, "torch_rng": torch.get_rng_state()})

    # ---- loop ----
    def micro_batches(self):
        """(epoch, batch) from the current data position to the end of the stage."""
        mb = self.cfg.micro_batch_size
        per_epoch = self.steps_per_epoch * self.cfg.gradient_accumulation_steps
        total_micro = self.total_steps * self.cfg.gradient_accumulation_steps
        while self.micro_step < total_micro:
            epoch, k = divmod(self.micro_step, per_epoch)
            order = epoch_order(len(self.train), self.cfg.seed, epoch, self.rank, self.world)
            rows = [self.train[int(i)] for i in order[k * mb:(k + 1) * mb]]
            yield epoch, collate(rows)

    def evaluate(self) -> float | None:
        if self.dev is None or not len(self.dev):
            return None
        self.engine.eval()
        num = den = 0.0
        with torch.no_grad():
            for lo in range(0, len(self.dev), self.cfg.micro_batch_size):
                b = collate([self.dev[i] for i in range(lo, min(len(self.dev), lo + self.cfg.micro_batch_size))])
                loss, w = weighted_loss(packed_forward(self.engine, b), b["input_ids"], b["weights"])
                num += float(loss) * w
                den += w
        self.engine.train()
        return num / max(den, 1e-8)

    def run(self) -> Path:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(self.out / "logs")) if self.rank == 0 else None
        metrics_path = self.out / "logs" / "metrics.jsonl"
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(metrics_path, "a" if self.resume else "w")
        bar = tqdm(total=self.total_steps, initial=self.engine.global_steps, desc=cfg.name, disable=self.rank != 0,
                   unit="step")
        self.engine.train()
        t0, tokens, sup = time.perf_counter(), 0, 0.0
        last_loss = None
        for epoch, batch in self.micro_batches():
            loss, w = weighted_loss(packed_forward(self.engine, batch), batch["input_ids"], batch["weights"])
            self.engine.backward(loss)
            self.engine.step()
            self.micro_step += 1
            tokens += batch["input_ids"].numel()
            sup += w
            if self.micro_step % cfg.gradient_accumulation_steps:
                continue
            step = self.engine.global_steps
            last_loss = float(loss.detach())
            bar.update(1)
            record = {"step": step, "epoch": epoch, "loss": last_loss, "lr": self.scheduler.get_last_lr()[0]}
            if step % cfg.log_every == 0:
                secs = time.perf_counter() - t0
                record.update(tokens_per_s=tokens / secs, supervised_tokens=sup)
                t0, tokens, sup = time.perf_counter(), 0, 0.0
            if cfg.eval_every and step % cfg.eval_every == 0:
                record["eval_loss"] = self.evaluate()
            if writer:
                for key in ("loss", "lr", "tokens_per_s", "supervised_tokens", "eval_loss"):
                    if record.get(key) is not None:
                        writer.add_scalar(f"train/{key}" if key != "eval_loss" else "eval/loss", record[key], step)
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{last_loss:.3f}")
            if cfg.save_every and step % cfg.save_every == 0:
                self.save_checkpoint()
        bar.close()
        final_eval = self.evaluate()
        if writer:
            if final_eval is not None:
                writer.add_scalar("eval/loss", final_eval, self.engine.global_steps)
            writer.close()
        log.close()
        return self.save_final(last_loss, final_eval)

    def save_final(self, last_loss, final_eval) -> Path:
        """save_pretrained dir (merged if LoRA) + tokenizer + generation config + lineage.json."""
        from transformers import AutoTokenizer, GenerationConfig

        final = self.out / "final"
        module = self.engine.module
        zero3 = self.ds_config.get("zero_optimization", {}).get("stage", 0) == 3
        state = self.engine._zero3_consolidated_16bit_state_dict() if zero3 else None
        if self.rank != 0:
            return final
        if self.cfg.lora:
            module.save_pretrained(str(self.out / "adapter"), state_dict=state)
            module = module.merge_and_unload()
            state = None
        module.save_pretrained(str(final), state_dict=state, safe_serialization=True)
        tok = AutoTokenizer.from_pretrained(str(self.data_dir / "tokenizer"))
        tok.save_pretrained(str(final))
        GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, do_sample=True,
                         temperature=0.8, top_p=0.9, repetition_penalty=1.2, max_new_tokens=512).save_pretrained(
            str(final))
        parent = self.init / "lineage.json" if self.init else None
        lineage = {
            "stage": self.cfg.name, "config": self.cfg.model_dump(), "deepspeed": self.ds_config,
            "data_dir": str(self.data_dir), "data_manifest_sha256": sha256_file(self.data_dir / "manifest.sha256"),
            "init_from": str(self.init) if self.init else None,
            "parent": json.loads(parent.read_text()) if parent and parent.is_file() else None,
            "steps": self.engine.global_steps, "final_train_loss": last_loss, "final_eval_loss": final_eval,
        }
        with atomic_write(final / "lineage.json", "w") as fh:
            json.dump(lineage, fh, indent=2)
        return final

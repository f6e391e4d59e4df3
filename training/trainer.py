"""Run one training stage with DeepSpeed: global data order, token-weighted loss, sharded eval, exact resume.

The data order is a pure function of (seed, epoch) over the whole world: optimizer step s trains rows
``perm[s*R:(s+1)*R]`` (R = micro x accumulation x processes), split over ranks and micro-batches. The loss of a
step is the token-weighted mean over all its rows: every micro-batch contributes its summed weighted loss
divided by the step's supervised weight all-reduced over ranks, so micro 1 x accum 4, micro 4 x accum 1 and
two processes give the same gradients. Checkpoints record the step, every RNG of every rank and the topology
(``training/checkpoint.py``): a stage killed with -9 and resumed ends with the same weights. Every stage ends
in ``<output>/final``: a save_pretrained dir (safetensors, tokenizer with chat template, generation config)
plus ``lineage.json``, written in ``.final.tmp`` and renamed when complete.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch

from common.chat_format import GENERATION_DEFAULTS
from common.errors import ConfigError, first_line
from common.files import atomic_write, sha256_file
from tokenization_prep.schema import TokenizedDir, tokenizer_fingerprint
from training import checkpoint
from training.attention import check_attention, resolve_attention
from training.config import StageConfig, deepspeed_dict
from training.data import (
    PackedDataset,
    StepSampler,
    check_same_tokenizer,
    collate,
    load_data,
    read_lineage,
    step_loader,
)
from training.dev_loss import GroupedLoss, eval_record, eval_table, log_eval
from training.distributed import (
    check_shared_dir,
    global_sum,
    init_process_group,
    rank,
    refuse_together,
    to_device,
    world_size,
)
from training.loading import DsFacts, check_hardware
from training.modeling import (
    apply_lora,
    build_model,
    enable_checkpointing,
    packed_loss,
    packed_token_losses,
    param_groups,
)
from training.plan import Workload


def check_inputs(cfg: StageConfig) -> tuple[TokenizedDir, Path | None]:
    """Everything that can be wrong before training starts, as one ConfigError line: the data dir against
    tokenization_prep's schema (finished, unaltered, file counts), its tokenizer against ``init_from``'s."""
    data = load_data(cfg.resolve(cfg.data_dir), full=cfg.verify_data == "sha256")
    load_data_tokenizer(data)
    init = cfg.resolve(cfg.init_from)
    if init is not None and not (init / "config.json").is_file():
        raise ConfigError(f"init_from {init} is not a saved model (no config.json); run the earlier stage first")
    if init is not None:
        check_same_tokenizer(data, init)
    return data, init


def load_data_tokenizer(data: TokenizedDir):
    """The tokenizer saved beside the data (the final model gets it), checked against the fingerprint in
    metadata.yaml and against the embedding size, before training."""
    from transformers import AutoTokenizer

    path = data.path / "tokenizer"
    try:
        tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"data_dir {path}: no readable tokenizer ({first_line(exc)}); re-run tokenization_prep"
        ) from None
    if data.meta.tokenizer_sha256 and tokenizer_fingerprint(tok) != data.meta.tokenizer_sha256:
        raise ConfigError(
            f"data_dir {path}: not the tokenizer metadata.yaml records (tokenizer_sha256 differs); "
            "re-run tokenization_prep"
        )
    if len(tok) > data.embedding_rows:
        raise ConfigError(
            f"data_dir {path}: {len(tok)} tokens but metadata.yaml sizes the embedding for "
            f"{data.embedding_rows}; re-run tokenization_prep"
        )
    return tok


def make_scheduler(cfg: StageConfig, total_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line torn by a kill counts as after any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class StageRunner:
    """Owns the engine, the data and the bookkeeping of one stage."""

    def __init__(self, cfg: StageConfig, resume: bool = False):
        self.cfg, self.resume = cfg, resume
        self.rank, self.world = rank(), world_size()
        refusal, saved = None, None
        try:
            saved = self.check_before_start(cfg, resume)
        except ConfigError as exc:
            if self.world == 1:
                raise
            refusal = exc  # said by every rank together below, so no rank waits in a collective for the others
        init_process_group()
        refuse_together(refusal)
        check_shared_dir(self.out, "output_dir")
        check_shared_dir(self.data_dir, "data_dir", read_only=True)
        if not resume and self.rank == 0:  # a fresh run: a later --resume must never pick up an older run's state
            for old in (self.ckpt, self.out / "logs"):
                shutil.rmtree(old, ignore_errors=True)
        load_tag = None
        if saved:
            load_tag = checkpoint.latest_tag(self.ckpt)
            if saved["universal"]:
                load_tag = checkpoint.to_universal(self.ckpt, load_tag)
                self.ds_config["checkpoint"] = {"load_universal": True}
        model, self._keep_alive = build_model(
            cfg.model,
            self.data.embedding_rows,
            self.data.meta.max_seq_length,
            self.init,
            cfg.seed,
            ds=self.ds_config,
            ds_name=cfg.deepspeed,
            lora=cfg.lora is not None,
            attn=self.attn,
            work=Workload.of(cfg, self.data.meta.max_seq_length, self.attn),
        )
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)
        if cfg.lora:
            model = apply_lora(model, cfg.model.kind, cfg.lora)
        import deepspeed  # imported late: every data and model check above runs before DeepSpeed starts

        try:
            self.engine, _, _, self.scheduler = deepspeed.initialize(
                model=model,
                model_parameters=param_groups(model, cfg.weight_decay),
                config=self.ds_config,
                lr_scheduler=make_scheduler(cfg, self.total_steps),
            )
        except torch.OutOfMemoryError as exc:
            raise ConfigError(
                f"out of memory while DeepSpeed set up the model ({first_line(exc)}); lower the model "
                "size, use an offload config (ds/zero3_offload_bf16.json) or more GPUs"
            ) from None
        except (ValueError, AssertionError, NotImplementedError, RuntimeError) as exc:
            raise ConfigError(f"deepspeed config {cfg.deepspeed} does not run here: {first_line(exc)}") from None
        self.device = self.engine.device
        if self.device.type == "cuda":  # the logged peak is training's, not the loading's transient peak
            torch.cuda.reset_peak_memory_stats(self.device)
        if saved:
            checkpoint.load(self.engine, self.ckpt, saved, load_tag)

    def check_before_start(self, cfg: StageConfig, resume: bool) -> dict | None:
        """Every check that needs no process group: data, init_from, DeepSpeed config, attention, batch shape,
        resume topology. Returns the saved trainer state to resume from (or None)."""
        self.data, self.init = check_inputs(cfg)
        self.data_dir = self.data.path
        self.out = cfg.out_dir
        self.train = PackedDataset(self.data, "train", cfg.prompt_loss_weight)
        self.dev = (
            PackedDataset(self.data, "dev", cfg.prompt_loss_weight, groups=True) if self.data.splits["dev"] else None
        )
        self.ds_config = deepspeed_dict(cfg, self.world)
        facts = DsFacts.of(self.ds_config)
        check_hardware(facts, cfg.deepspeed)
        self.attn = resolve_attention(cfg.attn_implementation, torch.cuda.is_available(), facts.dtype)
        check_attention(cfg.model.kind, self.attn)
        if self.attn == "flash_attention_2" and facts.dtype == torch.float32:
            raise ConfigError(
                f"attn_implementation flash_attention_2 runs in bf16 or fp16 only, and {cfg.deepspeed} "
                "trains in fp32; use a bf16 DeepSpeed config (ds/zero2_bf16.json) or sdpa"
            )
        self.rows_per_step = cfg.micro_batch_size * cfg.gradient_accumulation_steps * self.world
        self.steps_per_epoch = len(self.train) // self.rows_per_step
        if self.steps_per_epoch == 0:
            raise ConfigError(
                f"{len(self.train)} training rows cannot fill one step of {self.rows_per_step} rows; "
                "lower micro_batch_size or gradient_accumulation_steps"
            )
        total = math.ceil(cfg.epochs * self.steps_per_epoch)
        self.total_steps = min(total, cfg.max_steps) if cfg.max_steps else total
        self.topology = checkpoint.topology(
            self.world, cfg.micro_batch_size, cfg.gradient_accumulation_steps, facts.stage
        )
        self.ckpt = self.out / "checkpoints"
        return checkpoint.check_resume(self.ckpt, self.topology) if resume else None

    # ---- data ----
    def batches(self, start: int):
        """This rank's micro-batches from optimizer step ``start`` to the end, on the CPU (pinned on CUDA)."""
        cfg = self.cfg
        sampler = StepSampler(
            len(self.train),
            cfg.seed,
            cfg.micro_batch_size,
            cfg.gradient_accumulation_steps,
            self.world,
            self.rank,
            self.steps_per_epoch,
            start,
            self.total_steps,
        )
        return iter(
            step_loader(
                self.train, sampler, cfg.dataloader_workers, cfg.dataloader_prefetch, pin=self.device.type == "cuda"
            )
        )

    def evaluate(self) -> dict | None:
        """Token-weighted dev loss, in all and per source and category of the articles (their provenance), rows
        sharded over ranks (equal counts; fill rows weigh 0), sums all-reduced: {"loss", "by_source", ...}."""
        if self.dev is None or not len(self.dev):
            return None
        mb = self.cfg.micro_batch_size
        mine = list(range(self.rank, len(self.dev), self.world))
        per_rank = math.ceil(len(self.dev) / self.world)
        fill = per_rank - len(mine) + (-per_rank) % mb  # every rank runs the same number of same-shape forwards
        acc = GroupedLoss(self.dev.groups.names, self.device)
        self.engine.eval()
        with torch.no_grad():
            for lo in range(0, len(mine) + fill, mb):
                rows = self.dev.__getitems__([mine[k] if k < len(mine) else 0 for k in range(lo, lo + mb)])
                for k, row in zip(range(lo, lo + mb), rows):
                    if k >= len(mine):  # a fill row: same shape, no weight
                        row["weights"] = torch.zeros_like(row["weights"])
                batch = to_device(collate(rows), self.device)
                acc.add(batch, packed_token_losses(self.engine, batch))
        self.engine.train()
        return acc.result(global_sum(acc.sums(), self.device))

    # ---- loop ----
    def train_step(self, loader) -> tuple[float, float, float]:
        """One optimizer step on the next micro-batches of ``loader``; returns global (loss, weight, real tokens)."""
        batches = [next(loader) for _ in range(self.cfg.gradient_accumulation_steps)]
        local_w = sum(float(b["weights"][:, :-1].sum()) for b in batches)  # on the CPU: no device sync
        local_real = sum(float(b["real_tokens"].sum()) for b in batches)
        batches = [to_device(b, self.device) for b in batches]
        (total_w,) = global_sum([local_w], self.device)
        scale = self.world / max(total_w, 1e-8)  # DeepSpeed averages gradients over ranks: undo it
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        for b in batches:
            loss_sum = packed_loss(self.engine, b)
            self.engine.backward(loss_sum * scale, scale_wrt_gas=False)
            self.engine.step()
            loss_acc += loss_sum.detach()
        loss, real = global_sum([loss_acc, local_real], self.device)
        return loss / max(total_w, 1e-8), total_w, real

    def run(self) -> Path:
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        cfg = self.cfg
        main = self.rank == 0
        self.out.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(self.out / "logs")) if main else None
        metrics_path = self.out / "logs" / "metrics.jsonl"
        metrics_path.parent.mkdir(parents=True, exist_ok=True)
        if main and self.resume and metrics_path.is_file():  # drop records of steps after the checkpoint
            done = self.engine.global_steps
            keep = [x for x in metrics_path.read_text().splitlines() if logged_step(x) <= done]
            with atomic_write(metrics_path, "w") as fh:
                fh.write("".join(x + "\n" for x in keep))
        log = open(metrics_path, "a" if self.resume else "w") if main else None
        bar = tqdm(
            total=self.total_steps, initial=self.engine.global_steps, desc=cfg.name, disable=not main, unit="step"
        )
        self.engine.train()
        t0, tokens, sup = time.perf_counter(), 0.0, 0.0
        last_loss, final_eval = None, None
        loader = self.batches(self.engine.global_steps)
        for step0 in range(self.engine.global_steps, self.total_steps):
            last_loss, w, real = self.train_step(loader)
            tokens, sup = tokens + real, sup + w
            step = self.engine.global_steps
            bar.update(1)
            record = {
                "step": step,
                "epoch": step0 // self.steps_per_epoch,
                "loss": last_loss,
                "lr": self.scheduler.get_last_lr()[0],
            }
            if step % cfg.log_every == 0:
                secs = time.perf_counter() - t0
                record.update(tokens_per_s=tokens / secs, supervised_tokens=sup, step_s=secs / cfg.log_every)
                if self.device.type == "cuda":
                    record["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1024**3
                tokens, sup = 0.0, 0.0
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == self.total_steps:  # and at the end
                result = self.evaluate()
                record.update(eval_record(result))
                final_eval = result if step == self.total_steps else None
            if main:
                for key in ("loss", "lr", "tokens_per_s", "supervised_tokens"):
                    if record.get(key) is not None:
                        writer.add_scalar(f"train/{key}", record[key], step)
                log_eval(writer, record, step)
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix(loss=f"{last_loss:.3f}")
            if cfg.save_every and step % cfg.save_every == 0:
                checkpoint.save(self.engine, self.ckpt, step * self.rows_per_step, self.topology)
            if step % cfg.log_every == 0:
                t0 = time.perf_counter()  # throughput windows hold training only, not eval or saving
        bar.close()
        if final_eval is None:  # a resumed run with no step left
            final_eval = self.evaluate()
        if main:
            if final_eval is not None:
                print("\n".join(eval_table(cfg.name, final_eval)), flush=True)
            writer.close()
            log.close()
        return self.save_final(last_loss, final_eval)

    def save_final(self, last_loss, final_eval) -> Path:
        """save_pretrained dir (merged if LoRA) + tokenizer + generation config + lineage.json, by rank 0."""
        from transformers import GenerationConfig

        from training.export import save_model

        final, adapter = self.out / "final", self.out / "adapter"
        staged = {final: self.out / ".final.tmp", adapter: self.out / ".adapter.tmp"}  # renamed once complete
        if self.rank == 0:
            for tmp in staged.values():
                shutil.rmtree(tmp, ignore_errors=True)
        save_model(self.engine, self.cfg, staged[final], staged[adapter])  # every rank: ZeRO-3 gathers collectively
        if self.rank != 0:
            return final
        tok = load_data_tokenizer(self.data)
        tok.save_pretrained(str(staged[final]))
        GenerationConfig(
            eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id, do_sample=True, **GENERATION_DEFAULTS
        ).save_pretrained(str(staged[final]))
        parent = read_lineage(self.init) if self.init else None
        lineage = {
            "stage": self.cfg.name,
            "config": self.cfg.model_dump(),
            "deepspeed": self.ds_config,
            "topology": self.topology,
            "attn_implementation": self.attn,
            "data_dir": str(self.data_dir),
            "data_manifest_sha256": sha256_file(self.data_dir / "manifest.sha256")
            if (self.data_dir / "manifest.sha256").is_file()
            else None,
            "tokenizer_sha256": self.data.tokenizer_sha256,
            "init_from": str(self.init) if self.init else None,
            "parent": parent,
            "steps": self.engine.global_steps,
            "final_train_loss": last_loss,
            **eval_record(final_eval, prefix="final_eval_loss"),
        }
        with atomic_write(staged[final] / "lineage.json", "w") as fh:
            json.dump(lineage, fh, indent=2)
        for done, tmp in staged.items():  # a killed save leaves only a .tmp dir, never a partial final/ or adapter/
            if tmp.is_dir():
                shutil.rmtree(done, ignore_errors=True)
                tmp.rename(done)
        return final

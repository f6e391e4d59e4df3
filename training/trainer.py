"""Run one training stage with DeepSpeed: global data order, token-weighted loss, sharded eval, exact resume.

The data order is a pure function of (seed, epoch) over the whole world: optimizer step s trains rows
``perm[s*R:(s+1)*R]`` (R = micro x accumulation x processes), split over ranks and micro-batches. The loss of a
step is the token-weighted mean over all its rows: every micro-batch contributes its summed weighted loss
divided by the step's supervised weight all-reduced over ranks, so micro 1 x accum 4, micro 4 x accum 1 and
two processes give the same gradients. Checkpoints record the step, every RNG of every rank and the topology
(``training/checkpoint.py``): a stage killed with -9 and resumed ends with the same weights. Every stage ends
in ``<output>/final``: a save_pretrained dir (safetensors, tokenizer with chat template, generation config)
plus ``lineage.json``, written in ``.final.tmp`` and renamed when complete. ``objective: dpo`` swaps in its own
rows, step and evaluation (``training/dpo.py``'s hooks); everything else here is shared.
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
from training import checkpoint
from training.attention import check_attention, resolve_attention
from training.config import StageConfig, deepspeed_dict
from training.data import (
    PackedDataset,
    StepSampler,
    check_inputs,
    collate,
    dev_shard,
    load_data_tokenizer,
    read_lineage,
    step_loader,
)
from training.data_card import carry_data_card
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
from training.export import save_model
from training.modeling import (
    apply_lora,
    build_model,
    enable_checkpointing,
    packed_loss,
    packed_token_losses,
    param_groups,
)
from training.plan import Workload
from training.preference import METRICS
from training.preflight import DsFacts, check_hardware


def make_scheduler(cfg: StageConfig, total_steps: int):
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return 1.0 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    return lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def supervised_weight(batches: list[dict]) -> float:
    """The summed loss weight of micro-batches' targets (a row's last position predicts nothing)."""
    return sum(float(b["weights"][:, :-1].sum()) for b in batches)


def loss_scale(step_weight: float, world: int) -> float:
    """The factor each micro-batch's summed weighted loss gets before backward, so that a step's gradient is the
    gradient of the token-weighted mean loss over all its rows, however they are split into ranks and
    micro-batches: 1 / the step's supervised weight summed over ranks, times the number of ranks, since DeepSpeed
    averages gradients over ranks (and adds the micro-batches' gradients unscaled: ``scale_wrt_gas=False``)."""
    return world / max(step_weight, 1e-8)


def logged_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line torn by a kill counts as after any checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class StageRunner:
    """One stage, set up in named steps as torchtune's recipes are, then ``run``.

    The steps that need no process group run first, so that a refusal on any rank is said by every rank together
    before DeepSpeed starts: ``setup_data`` (the data dir and the step counts), ``setup_deepspeed`` (the DeepSpeed
    config, this machine's support for it, the attention), ``find_resume_state`` (the checkpoint a ``--resume``
    continues). Then ``start_process_group``, ``prepare_resume`` (a checkpoint of another process count converted
    once), ``setup_model`` (built, loaded and checked against the memory here), ``setup_engine`` (DeepSpeed) and
    ``resume_from`` (the engine's state and every RNG). The stage config is read, never changed.
    """

    def __init__(self, cfg: StageConfig, resume: bool = False):
        self.cfg, self.resume = cfg, resume
        self.rank, self.world = rank(), world_size()
        refusal = None
        try:
            self.setup_data()
            self.setup_deepspeed()
            self.saved = self.find_resume_state()
        except ConfigError as exc:
            if self.world == 1:
                raise
            refusal = exc  # said by every rank together below, so no rank waits in a collective for the others
        self.start_process_group(refusal)
        load_tag = self.prepare_resume()
        self.setup_engine(self.setup_model())
        if self.objective:  # the reference log-probs, from the initial weights (before a resume loads others)
            self.objective.prepare()
        if load_tag:
            self.resume_from(load_tag)

    def setup_data(self) -> None:
        """The data dir checked against tokenization_prep's schema and ``init_from``'s tokenizer, the train and dev
        splits, and the run's length in optimizer steps."""
        cfg = self.cfg
        self.data, self.init = check_inputs(cfg)
        self.data_dir = self.data.path
        self.out = cfg.out_dir
        self.ckpt = self.out / "checkpoints"
        self.objective = None  # objective dpo: its hooks (training/dpo.py); sft: the code here
        if cfg.objective == "dpo":
            from training.dpo import PreferenceObjective

            self.objective = PreferenceObjective(self)
            self.train, self.dev = self.objective.train, self.objective.dev
        else:
            self.train = PackedDataset(self.data, "train", cfg.prompt_loss_weight)
            self.dev = (
                PackedDataset(self.data, "dev", cfg.prompt_loss_weight, groups=True)
                if self.data.splits["dev"]
                else None
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

    def setup_deepspeed(self) -> None:
        """The DeepSpeed config of this stage and world, checked to run on this machine; the attention for packed
        rows it resolves to; the topology a checkpoint records."""
        cfg = self.cfg
        self.ds_config = deepspeed_dict(cfg, self.world)
        self.facts = DsFacts.of(self.ds_config)
        check_hardware(self.facts, cfg.deepspeed)
        self.attn = resolve_attention(cfg.attn_implementation, torch.cuda.is_available(), self.facts.dtype)
        check_attention(cfg.model.kind, self.attn)
        if self.attn == "flash_attention_2" and self.facts.dtype == torch.float32:
            raise ConfigError(
                f"attn_implementation flash_attention_2 runs in bf16 or fp16 only, and {cfg.deepspeed} "
                "trains in fp32; use a bf16 DeepSpeed config (ds/zero2_bf16.json) or sdpa"
            )
        self.topology = checkpoint.topology(
            self.world, cfg.micro_batch_size, cfg.gradient_accumulation_steps, self.facts.stage
        )

    def find_resume_state(self) -> dict | None:
        """With ``--resume``: the saved trainer state, checked to continue at the exact sample position in this
        topology (else one line); a checkpoint of another process count loads as DeepSpeed's universal one."""
        if not self.resume:
            return None
        saved = checkpoint.check_resume(self.ckpt, self.topology)
        if saved["universal"]:
            self.ds_config = {**self.ds_config, "checkpoint": {"load_universal": True}}
        return saved

    def start_process_group(self, refusal: ConfigError | None) -> None:
        """Start the process group, stop every rank if any refused, check that output_path and data_dir are the
        same directories on every rank, and on a fresh run remove an older run's checkpoints and logs (a later
        ``--resume`` must never pick up an older run's state)."""
        init_process_group()
        refuse_together(refusal)
        check_shared_dir(self.out, "output_path")
        check_shared_dir(self.data_dir, "data_dir", read_only=True)
        if not self.resume and self.rank == 0:
            for old in (self.ckpt, self.out / "logs"):
                shutil.rmtree(old, ignore_errors=True)

    def prepare_resume(self) -> str | None:
        """The checkpoint tag to resume from (None on a fresh run), converted to DeepSpeed's universal format
        first when another number of processes wrote it (before any weights load: the conversion needs memory)."""
        if not self.saved:
            return None
        tag = checkpoint.latest_tag(self.ckpt)
        return checkpoint.to_universal(self.ckpt, tag) if self.saved["universal"] else tag

    def setup_model(self):
        """The model to train: checked against the data and the memory here, loaded as DeepSpeed will train it
        (partitioned under ZeRO-3), with gradient checkpointing and the LoRA adapter when configured."""
        cfg = self.cfg
        seq_len = self.data.meta.max_seq_length
        model, self._keep_alive = build_model(
            cfg.model,
            self.data.embedding_rows,
            seq_len,
            self.init,
            cfg.seed,
            ds=self.ds_config,
            ds_name=cfg.deepspeed,
            lora=cfg.lora is not None,
            attn=self.attn,
            work=Workload.of(cfg, seq_len, self.attn),
        )
        if cfg.gradient_checkpointing:
            enable_checkpointing(model)
        if cfg.lora:
            model = apply_lora(model, cfg.model.kind, cfg.lora)
        return model

    def setup_engine(self, model) -> None:
        """DeepSpeed's engine with AdamW (no decay on biases and norms) and the stage's schedule; a setup that
        runs out of memory or that DeepSpeed refuses is one line."""
        import deepspeed  # imported late: every data and model check above runs before DeepSpeed starts

        cfg = self.cfg
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

    def resume_from(self, tag: str) -> None:
        """The engine's state (weights, optimizer, schedule, step) from checkpoint ``tag`` and this rank's RNGs."""
        checkpoint.load(self.engine, self.ckpt, self.saved, tag)

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
        pin, fn = self.device.type == "cuda", self.objective.collate if self.objective else collate
        return iter(step_loader(self.train, sampler, cfg.dataloader_workers, cfg.dataloader_prefetch, pin, fn))

    def evaluate(self) -> dict | None:
        """Token-weighted dev loss, in all and per source and category of the articles (their provenance), rows
        sharded over ranks (equal counts; fill rows weigh 0), sums all-reduced: {"loss", "by_source", ...}."""
        if self.objective:
            return self.objective.evaluate()
        if self.dev is None or not len(self.dev):
            return None
        acc = GroupedLoss(self.dev.groups.names, self.device)
        self.engine.eval()
        with torch.no_grad():
            n_dev = min(len(self.dev), self.cfg.eval_rows or len(self.dev))
            for part in dev_shard(n_dev, self.rank, self.world, self.cfg.micro_batch_size):
                rows = self.dev.__getitems__([0 if k is None else k for k in part])
                for k, row in zip(part, rows):
                    if k is None:  # a fill row: same shape, no weight
                        row["weights"] = torch.zeros_like(row["weights"])
                batch = to_device(collate(rows), self.device)
                acc.add(batch, packed_token_losses(self.engine, batch))
        self.engine.train()
        return acc.result(global_sum(acc.sums(), self.device))

    # ---- loop ----
    def train_step(self, loader) -> tuple[float, float, float]:
        """One optimizer step on the next micro-batches of ``loader``; returns global (loss, weight, real tokens)."""
        if self.objective:
            return self.objective.train_step(loader)
        batches = [next(loader) for _ in range(self.cfg.gradient_accumulation_steps)]
        local_w = supervised_weight(batches)  # on the CPU: no device sync
        local_real = sum(float(b["real_tokens"].sum()) for b in batches)
        batches = [to_device(b, self.device) for b in batches]
        (total_w,) = global_sum([local_w], self.device)
        scale = loss_scale(total_w, self.world)
        loss_acc = torch.zeros((), dtype=torch.float64, device=self.device)
        for b in batches:
            loss_sum = packed_loss(self.engine, b)
            self.engine.backward(loss_sum * scale, scale_wrt_gas=False)
            self.engine.step()
            loss_acc += loss_sum.detach()
        loss, real = global_sum([loss_acc, local_real], self.device)
        return loss / max(total_w, 1e-8), total_w, real

    def run(self) -> Path:
        """Train from the current step to the end: metrics.jsonl and TensorBoard logs, evaluations, checkpoints,
        then the final model; returns its dir."""
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
                **(self.objective.record if self.objective else {}),
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
                for key in ("loss", "lr", "tokens_per_s", "supervised_tokens", *METRICS[1:]):
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
        carried = carry_data_card(self.data, parent, staged[final])  # data_licenses, data_card; copies DATA_CARD.md
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
            **carried,
            "init_from": str(self.init) if self.init else None,
            "parent": parent,
            "steps": self.engine.global_steps,
            "final_train_loss": last_loss,
            **eval_record(final_eval, prefix="final_eval_loss"),
            **(self.objective.lineage() if self.objective else {"objective": "sft"}),
        }
        with atomic_write(staged[final] / "lineage.json", "w") as fh:
            json.dump(lineage, fh, indent=2)
        for done, tmp in staged.items():  # a killed save leaves only a .tmp dir, never a partial final/ or adapter/
            if tmp.is_dir():
                shutil.rmtree(done, ignore_errors=True)
                tmp.rename(done)
        return final

"""Stage configs as data: a YAML file validated by pydantic (unknown keys rejected, one clear line per error).

Relative paths in a config are relative to the current directory, as every path on every stage's command line
(the project's one rule; the README runs everything from the repository root).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import ConfigError, first_line
from common.settings import read_config

ROOT = Path(__file__).resolve().parents[1]
# attention over packed rows, isolated per article (training/attention.py)
IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")
ModelKind = Literal["pythia", "bloom"]  # the architectures (training/modeling.py's MODEL_CLASSES)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TinyShape(Strict):
    """A small model built from config (random init) for CPU runs and tests."""

    hidden_size: int = Field(64, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    intermediate_size: int | None = None

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads:
            raise ValueError("hidden_size must be divisible by num_heads")
        return self


class ModelConfig(Strict):
    """Either a hub id / local dir (``name_or_path``) or a tiny shape; ``kind`` picks the architecture."""

    kind: ModelKind
    name_or_path: str | None = None
    tiny: TinyShape | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.name_or_path is None) == (self.tiny is None):
            raise ValueError("give exactly one of model.name_or_path (hub id or dir) and model.tiny (a shape)")
        return self


class LoraConfig(Strict):
    """LoRA via peft (Flan-UL2-Dolly's recipe: r, alpha, dropout, target modules)."""

    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = None  # default per model kind


class DpoConfig(Strict):
    """Preference tuning (``objective: dpo``): the pair loss and where the reference log-probs come from."""

    beta: float = Field(0.1, gt=0, description="the KL strength (sigmoid, ipo) or reward scale (simpo)")
    loss: Literal["sigmoid", "ipo", "simpo"] = Field("sigmoid", description="DPO (sigmoid), IPO or SimPO")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO's label noise (sigmoid, simpo)")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO's target reward margin")
    reference: Literal["precomputed", "live"] = Field(
        "precomputed", description="reference log-probs from a first pass (stored) or a frozen model in each step"
    )
    reference_model: str | None = Field(None, description="the reference model dir (default: init_from)")


class StageConfig(Strict):
    """One training stage (BLOOMChat values for real runs are in training/configs/*.yaml)."""

    name: str = Field(description="the stage's name (logs, lineage; the default output_path)")
    data_dir: str = Field(description="a tokenization_prep output dir (packed HDF5 with metadata.yaml)")
    model: ModelConfig
    init_from: str | None = Field(None, description="start from this saved model dir (an earlier stage's final/)")
    output_path: str | None = Field(None, description="the stage's output dir (default: training/ckpt/NAME)")
    deepspeed: str = Field(
        str(ROOT / "training/configs/ds/cpu.json"), description="DeepSpeed JSON (default: the bundled CPU config)"
    )
    epochs: float = Field(1, gt=0, description="passes over the training rows")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (quick runs)")
    micro_batch_size: int = Field(1, ge=1, description="rows per process and forward pass")
    gradient_accumulation_steps: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-5, gt=0, description="peak learning rate (AdamW)")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="learning rate after warmup")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (matrices only)")
    grad_clip: float = Field(1.0, gt=0, description="gradient norm clipping")
    prompt_loss_weight: float = Field(0.0, ge=0, le=1, description="loss weight of prompt tokens (replies: 1)")
    eval_every: int = Field(0, ge=0, description="dev loss every N steps (0: at the end only)")
    eval_rows: int = Field(0, ge=0, description="dev evaluation over the first N dev rows (pairs) only (0: all)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: none)")
    log_every: int = Field(1, ge=1, description="throughput window in steps")
    seed: int = Field(42, description="model init, data order and dropout")
    lora: LoraConfig | None = None
    objective: Literal["sft", "dpo"] = Field("sft", description="next-token loss (sft) or preference pairs (dpo)")
    dpo: DpoConfig | None = Field(None, description="the dpo objective's settings (default: DpoConfig())")
    gradient_checkpointing: bool = Field(
        False, description="recompute each layer's activations in backward (non-reentrant)"
    )
    dataloader_workers: int = Field(0, ge=0, description="processes reading and collating rows (0: the training one)")
    dataloader_prefetch: int = Field(2, ge=1, description="micro-batches each worker reads ahead")
    # attention over packed rows, isolated per article (training/attention.py); checked to be installed. auto:
    # flash_attention_2 on CUDA in 16 bits when flash-attn is installed, else flex_attention on CUDA, else sdpa
    attn_implementation: Literal[("auto", *IMPLEMENTATIONS)] = Field(
        "auto", description="attention over packed rows, isolated per article"
    )
    verify_data: Literal["size", "sha256"] = Field(
        "size",
        description="data_dir check before training: file sizes (and a re-hash of changed files), or every sha256",
    )

    @model_validator(mode="after")
    def _dpo_block(self):
        if self.objective == "sft" and self.dpo is not None:
            raise ValueError("a dpo block is set but objective is sft; set objective: dpo or remove the dpo block")
        if self.objective == "dpo" and self.dpo is None:
            self.dpo = DpoConfig()
        return self

    def resolve(self, path: str | None) -> Path | None:
        if path is None:
            return None
        return Path(path).expanduser().absolute()  # relative to the current directory

    @property
    def out_dir(self) -> Path:
        return self.resolve(self.output_path or f"training/ckpt/{self.name}")


def load_config(path: str | Path, **overrides) -> StageConfig:
    """Read and validate a stage YAML, with ``overrides`` (a command line's) over its settings; any problem is one
    ConfigError line naming file and field."""
    path = Path(path)
    raw = read_config(path, label=str(path))
    try:
        cfg = StageConfig(**{**raw, **overrides})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_line(exc)}") from None
    ds = cfg.resolve(cfg.deepspeed)
    if not ds.is_file():
        raise ConfigError(f"{path}: deepspeed config {cfg.deepspeed} not found (see training/configs/ds/)")
    try:
        json.loads(ds.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{ds}: not valid JSON ({exc})") from None
    return cfg


def deepspeed_dict(cfg: StageConfig, world_size: int) -> dict:
    """The DeepSpeed JSON with batch, optimizer, clipping and schedule filled from the stage config."""
    ds = json.loads(cfg.resolve(cfg.deepspeed).read_text())
    ds["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    ds["gradient_accumulation_steps"] = cfg.gradient_accumulation_steps
    ds["train_batch_size"] = cfg.micro_batch_size * cfg.gradient_accumulation_steps * world_size
    ds["gradient_clipping"] = cfg.grad_clip
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    opt.setdefault("params", {}).update({"lr": cfg.lr, "weight_decay": cfg.weight_decay})
    ds.setdefault("steps_per_print", 10**9)
    return ds

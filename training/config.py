"""Stage configs as data: a YAML file validated by pydantic (unknown keys rejected, one clear line per error).

Relative paths in a config are relative to the current directory, as every path on every stage's command line
(the project's one rule; the README runs everything from the repository root).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import ConfigError, first_line

ROOT = Path(__file__).resolve().parents[1]


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

    kind: Literal["pythia", "bloom"]
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


class StageConfig(Strict):
    """One training stage (BLOOMChat values for real runs are in training/configs/*.yaml)."""

    name: str
    data_dir: str
    model: ModelConfig
    init_from: str | None = None
    output_dir: str | None = None  # default training/ckpt/<name>
    deepspeed: str = str(ROOT / "training/configs/ds/cpu.json")  # the bundled CPU config wherever you run
    epochs: float = Field(1, gt=0)
    max_steps: int | None = Field(None, ge=1)
    micro_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr: float = Field(1e-5, gt=0)
    warmup_steps: int = Field(0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "constant"
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    prompt_loss_weight: float = Field(0.0, ge=0, le=1)
    eval_every: int = Field(0, ge=0)
    save_every: int = Field(0, ge=0)
    log_every: int = Field(1, ge=1)
    seed: int = 42
    lora: LoraConfig | None = None
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward (non-reentrant)
    dataloader_workers: int = Field(0, ge=0)  # processes reading and collating rows (0: the training process)
    dataloader_prefetch: int = Field(2, ge=1)  # micro-batches each worker reads ahead
    # attention over packed rows, isolated per article (training/attention.py); checked to be installed. auto:
    # flash_attention_2 on CUDA in 16 bits when flash-attn is installed, else flex_attention on CUDA, else sdpa
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2", "flex_attention"] = "auto"
    # data_dir check before training: file sizes (and a re-hash of files whose time changed), or every sha256
    verify_data: Literal["size", "sha256"] = "size"

    def resolve(self, path: str | None) -> Path | None:
        if path is None:
            return None
        return Path(path).expanduser().absolute()  # relative to the current directory

    @property
    def out_dir(self) -> Path:
        return self.resolve(self.output_dir or f"training/ckpt/{self.name}")


def load_config(path: str | Path) -> StageConfig:
    """Read and validate a stage YAML; any problem is one ConfigError line naming file and field."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: must be a YAML mapping of stage settings")
    try:
        cfg = StageConfig(**raw)
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

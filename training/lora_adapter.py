"""A LoRA adapter dir as peft saves it (a stage's ``adapter/``): its config and its factors, read and checked.

``read_adapter_config`` checks the adapter's config and names its base; ``read_adapter`` gives each target module's
factors and peft's scale, for ``training.merge_lora``'s shard-by-shard merge.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from common.errors import ConfigError, first_line

# peft's saved names: base_model.model.<module>.lora_A.weight, .lora_B.weight|bias, .lora_embedding_A|B
FACTOR = re.compile(r"^base_model\.model\.(.+)\.(lora_A|lora_B|lora_embedding_A|lora_embedding_B)(?:\.(weight|bias))?$")
KINDS = {  # (factor, parameter) pairs peft saves for Linear, Conv1D and Embedding targets
    ("lora_A", "weight"),
    ("lora_B", "weight"),
    ("lora_B", "bias"),
    ("lora_embedding_A", None),
    ("lora_embedding_B", None),
}
UNSUPPORTED = ("use_dora", "modules_to_save", "layer_replication", "target_parameters", "trainable_token_indices")


@dataclass
class Factors:
    """One LoRA target: ``a`` (r, in), ``b`` (out, r), peft's scale, and how the product lies in the weight."""

    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    b_bias: torch.Tensor | None = None
    scale: float = 1.0
    transpose: bool = False  # fan_in_fan_out (Conv1D) and embeddings keep the weight as (in, out)

    def delta(self) -> torch.Tensor:
        d = self.b.float() @ self.a.float()
        return (d.T if self.transpose else d) * self.scale


def _pattern_value(patterns: dict, module: str, default):
    """peft's ``get_pattern_key``: the first pattern matching the end of the module name (at a dot) wins."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_adapter(adapter_dir: str | Path) -> dict[str, Factors]:
    """The adapter's factors by target module name (as in the model, e.g. ``gpt_neox.layers.0.mlp.dense_h_to_4h``)."""
    cfg = read_adapter_config(adapter_dir, need_base=False)  # the base is given separately
    where = f"adapter {adapter_dir}"
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ConfigError(f"{where}: peft_type {cfg['peft_type']} is not LoRA; merge it with peft's merge_and_unload")
    if bad := [k for k in UNSUPPORTED if cfg.get(k)]:
        raise ConfigError(f"{where}: {bad[0]} is set, which this shard merge does not handle; use peft's merge")
    path = Path(adapter_dir).expanduser() / "adapter_model.safetensors"
    if not path.is_file():
        raise ConfigError(f"{where}: no adapter_model.safetensors (pickle adapters are not loaded)")
    targets: dict[str, Factors] = defaultdict(Factors)
    for key, t in load_file(str(path)).items():
        m = FACTOR.match(key)
        if not m or (m[2], m[3]) not in KINDS:
            raise ConfigError(f"{where}: tensor {key} is not a LoRA factor this merge knows; use peft's merge")
        f = targets[m[1]]
        if m[2] == "lora_B" and m[3] == "bias":
            f.b_bias = t
        elif m[2].startswith("lora_embedding"):  # A: (r, num_embeddings), B: (dim, r); weight is (num, dim)
            setattr(f, m[2][-1].lower(), t)
            f.transpose = True
        else:
            setattr(f, m[2][-1].lower(), t)
            f.transpose = bool(cfg.get("fan_in_fan_out"))
    for module, f in targets.items():
        if f.a is None or f.b is None or f.a.ndim != 2 or f.b.ndim != 2:
            raise ConfigError(f"{where}: {module} lacks a 2-D lora_A or lora_B (conv LoRA is not handled here)")
        r = _pattern_value(cfg.get("rank_pattern"), module, cfg.get("r", 8))
        alpha = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha", 8))
        if f.a.shape[0] != r:
            raise ConfigError(f"{where}: {module} has rank {f.a.shape[0]} but adapter_config.json says r={r}")
        f.scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return dict(targets)


def read_adapter_config(path: str | Path, need_base: bool = True) -> dict:
    """The ``adapter_config.json`` of a LoRA adapter dir (a stage's ``adapter/``), with the base model it names
    (unless ``need_base`` is false); any problem is one ConfigError line. Shared by ``merge_lora`` and inference."""
    cfg_path = Path(path).expanduser() / "adapter_config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{path}: no adapter_config.json; give a LoRA adapter directory (a stage's adapter/)")
    try:
        adapter = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: adapter_config.json is not readable JSON ({first_line(exc)})") from None
    if not isinstance(adapter, dict):
        raise ConfigError(f"{path}: adapter_config.json is not a JSON object; re-run the training stage")
    if need_base and not isinstance(adapter.get("base_model_name_or_path"), str):
        raise ConfigError(f"{path}: adapter_config.json names no base_model_name_or_path; re-run the training stage")
    return adapter

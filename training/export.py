"""Write a stage's final model from the engine, on every ZeRO stage, with or without LoRA.

Under ZeRO-3 no rank holds whole tensors, so the 16-bit weights are first gathered (collectively) into one
state dict on rank 0. With LoRA, rank 0 saves the adapter from that state, then loads the same state into a
fresh CPU copy of the peft model and merges there: ``merge_and_unload`` never runs on partitioned parameters,
and the merged ``final/`` loads with plain transformers.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from training.config import ConfigError, StageConfig, first_line
from training.distributed import rank


def consolidated_state(engine) -> dict | None:
    """Full state dict on rank 0 (None elsewhere). Collective under ZeRO-3: call it on every rank."""
    if engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return engine.module.state_dict() if rank() == 0 else None


def merged_copy(peft_module, state: dict):
    """A CPU copy of the base model with the LoRA weights of ``state`` merged in (peft's own merge)."""
    from peft import get_peft_model
    from transformers.initialization import no_init_weights

    base = peft_module.get_base_model()
    dtype = next(iter(state.values())).dtype
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():  # every weight comes from ``state``: skip the random init
            plain = type(base)(base.config)
    finally:
        torch.set_default_dtype(previous)
    plain.tie_weights()  # no_init_weights skips tying too; a tied head must share the embedding before loading
    copy = get_peft_model(plain, peft_module.peft_config["default"])
    missing, unexpected = copy.load_state_dict(state, strict=False)
    tied = {k for k in missing if "lm_head" in k or "embed_out" in k}
    if unexpected or set(missing) - tied:
        raise RuntimeError(
            f"LoRA merge: state does not match the model (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    return copy.merge_and_unload()


def save_model(engine, cfg: StageConfig, final: Path, adapter_dir: Path) -> None:
    """``final/`` as a plain save_pretrained model (merged when LoRA), ``adapter_dir`` with the adapter."""
    state = consolidated_state(engine)
    if rank() != 0:
        return
    module = engine.module
    if cfg.lora:
        module.save_pretrained(str(adapter_dir), state_dict=state)
        merged_copy(module, state).save_pretrained(str(final), safe_serialization=True)
    else:
        module.save_pretrained(str(final), state_dict=state, safe_serialization=True)


def read_adapter_config(path: str | Path) -> dict:
    """The ``adapter_config.json`` of a LoRA adapter dir (a stage's ``adapter/``), with the base model it names;
    any problem is one ConfigError line. Shared by ``merge_lora`` and inference's loader."""
    cfg_path = Path(path).expanduser() / "adapter_config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{path}: no adapter_config.json; give a LoRA adapter directory (a stage's adapter/)")
    try:
        adapter = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: adapter_config.json is not readable JSON ({first_line(exc)})") from None
    if not isinstance(adapter, dict) or not isinstance(adapter.get("base_model_name_or_path"), str):
        raise ConfigError(f"{path}: adapter_config.json names no base_model_name_or_path; re-run the training stage")
    return adapter


def merged_model(adapter_dir: str | Path, base: str, **load_kwargs):
    """The base model (safetensors only, no remote code) with the adapter merged in by peft."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True, trust_remote_code=False, **load_kwargs)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()

"""Write a stage's final model from the engine, on every ZeRO stage, with or without LoRA.

With LoRA only the adapter is gathered: under ZeRO-3 its (trainable) parameters are collected on every rank with
DeepSpeed's public ``GatheredParameters``, the frozen base never, and rank 0 saves the adapter dir. The merged
``final/`` is then built from the base's safetensors on disk, one shard at a time (``training.merge_lora``), so no
rank ever holds the whole model. Only a base that exists nowhere on disk (a random-init ``model.tiny``) is gathered
from the engine, layer by layer, to rank 0's CPU: that path is meant for such small models only. A full fine-tune
(no LoRA) is gathered the same way, as before.
"""

from __future__ import annotations

from pathlib import Path

from training.config import StageConfig
from training.distributed import rank
from training.merge_lora import merge_from_disk, merge_in_memory, staged_dir


def gathered_state(module, skip=lambda name: False) -> dict | None:
    """``module``'s state dict on rank 0's CPU (None elsewhere), gathered one submodule at a time under ZeRO-3 with
    ``deepspeed.zero.GatheredParameters`` (collective: call it on every rank). Tied parameters stay one tensor.
    Holds the whole model on rank 0: for models built from config and full fine-tunes only."""
    import deepspeed

    state, copies = ({} if rank() == 0 else None), {}
    for prefix, sub in module.named_modules():
        named = [(f"{prefix}.{n}".lstrip("."), p) for n, p in sub.named_parameters(recurse=False)]
        named = [(n, p) for n, p in named if not skip(n)]
        with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
            if state is None:
                continue
            for name, p in named:
                if id(p) not in copies:
                    copies[id(p)] = p.detach().to("cpu", copy=True)
                state[name] = copies[id(p)]
        if state is not None:
            for n, buf in sub.named_buffers(recurse=False):
                if buf is not None and n not in sub._non_persistent_buffers_set:
                    state[f"{prefix}.{n}".lstrip(".")] = buf.detach().cpu()
    return state


def adapter_state(engine) -> dict | None:
    """The trainable (LoRA) parameters on rank 0, gathered collectively under ZeRO-3; None where the module holds
    them whole (ZeRO 0-2: peft reads them from the module) and on other ranks."""
    if engine.zero_optimization_stage() != 3:
        return None
    import deepspeed

    named = [(n, p) for n, p in engine.module.named_parameters() if p.requires_grad]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        return {n: p.detach().to("cpu", copy=True) for n, p in named} if rank() == 0 else None


def base_source(cfg: StageConfig) -> str | None:
    """Where the stage's base weights are on disk: ``init_from``, else ``model.name_or_path`` (a local dir, else a
    hub id); None for a model built from config."""
    if cfg.init_from:
        return str(cfg.resolve(cfg.init_from))
    name = cfg.model.name_or_path
    if name is None:
        return None
    local = cfg.resolve(name)
    return str(local) if local.is_dir() else name


def base_names(peft_state: dict) -> dict:
    """A peft model's base weights under the plain model's names (no ``base_model.model.``, no ``.base_layer``)."""
    return {k.removeprefix("base_model.model.").replace(".base_layer.", "."): v for k, v in peft_state.items()}


def save_model(engine, cfg: StageConfig, final: Path, adapter_dir: Path) -> None:
    """``final/`` as a plain save_pretrained model (merged when LoRA), ``adapter_dir`` with the adapter. Called on
    every rank: under ZeRO-3 the gathers are collective; rank 0 writes."""
    module = engine.module
    zero3 = engine.zero_optimization_stage() == 3
    if not cfg.lora:
        state = gathered_state(module) if zero3 else None
        if rank() == 0:
            module.save_pretrained(str(final), state_dict=state, safe_serialization=True)
        return
    adapter = adapter_state(engine)
    source = base_source(cfg)
    base = None
    if source is None:  # no base on disk: gather it (small random-init models only, see the module docstring)
        if zero3:
            base = gathered_state(module, skip=lambda name: "lora_" in name)
        elif rank() == 0:
            base = module.state_dict()
    if rank() != 0:
        return
    module.save_pretrained(str(adapter_dir), state_dict=adapter)
    dtype = next(p.dtype for p in module.parameters() if not p.requires_grad)  # the training dtype
    with staged_dir(final) as tmp:
        if source is None:
            state = {k: v for k, v in base_names(base).items() if "lora_" not in k}
            merge_in_memory(state, module.get_base_model().config, adapter_dir, tmp, dtype)
        else:
            merge_from_disk(source, adapter_dir, tmp, dtype)

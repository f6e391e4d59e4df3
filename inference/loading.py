"""Load a model for chat or serving: a save_pretrained dir, a LoRA adapter dir or a hub id, on a chosen device.

Everything that can be wrong is one ``LoadError`` line with the fix: a missing path, a training stage dir given
instead of its ``final/``, a model dir without tokenizer files, a device or dtype this machine lacks,
quantization without CUDA or bitsandbytes. Safetensors only, never remote code. A LoRA adapter dir (a training
stage's ``adapter/``) is merged into the base model its ``adapter_config.json`` names, with peft's public API.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from common.errors import UserError, first_line
from inference.settings import Quantization

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


class LoadError(UserError):
    """Why the model cannot be loaded, and what to do, in one line."""


@dataclass
class Loaded:
    model: object
    tokenizer: object
    device: str  # where inputs go ("cuda:0", "cpu"); with several GPUs, the first one
    dtype: str
    source: str  # the dir or hub id the weights came from


def pick_device(device: str) -> tuple[str, bool]:
    """(the device for inputs, whether to spread the model over every GPU with device_map='auto')."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if device == "auto":
        return ("cuda:0", n > 1) if n else ("cpu", False)
    if device == "cpu":
        return "cpu", False
    if device == "cuda" or device.startswith("cuda:"):
        index = device.partition(":")[2] or "0"
        if not index.isdigit():
            raise LoadError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N")
        if int(index) >= n:
            raise LoadError(f"--device {device}: this machine has {n} CUDA GPU(s); use --device cpu or auto")
        return f"cuda:{index}", False
    raise LoadError(f"--device {device}: not a device; use auto, cpu, cuda or cuda:N")


def pick_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise LoadError(f"--dtype {dtype}: use auto, bf16, fp16 or fp32")
    return DTYPES[dtype]


def read_adapter_config(path: Path) -> dict:
    """The ``adapter_config.json`` of a LoRA adapter dir, which must name its base model; any problem is one line."""
    try:
        adapter = json.loads((path / "adapter_config.json").read_text())
    except (OSError, ValueError) as exc:
        raise LoadError(f"--model {path}: adapter_config.json is not readable JSON ({first_line(exc)})") from None
    if not isinstance(adapter, dict):
        raise LoadError(f"--model {path}: adapter_config.json is not a JSON object; re-run the training stage")
    if not isinstance(adapter.get("base_model_name_or_path"), str):
        raise LoadError(
            f"--model {path}: adapter_config.json names no base_model_name_or_path; re-run the training stage"
        )
    return adapter


def resolve_source(path: str) -> tuple[str, dict | None]:
    """(weights source, adapter config if ``path`` is a LoRA adapter dir); local problems are one line."""
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "adapter_config.json").is_file():
            return str(p), read_adapter_config(p)
        if (p / "config.json").is_file():
            return str(p), None
        if (p / "final" / "config.json").is_file():
            raise LoadError(f"--model {path}: this is a training stage dir; give its model: --model {p / 'final'}")
        raise LoadError(
            f"--model {path}: no config.json here; give a save_pretrained dir (a stage's final/), a "
            "LoRA adapter dir or a hub id"
        )
    if p.is_file():
        parent = p.parent if (p.parent / "config.json").is_file() else "training/ckpt/<stage>/final"
        raise LoadError(
            f"--model {path}: this is a file; give the directory that holds the model (--model {parent}), "
            "a LoRA adapter dir or a hub id"
        )
    looks_local = path.startswith(("/", ".", "~")) or path.count("/") != 1 or p.exists()
    if looks_local:
        raise LoadError(
            f"--model {path}: no such directory; train a stage first (training/ckpt/<stage>/final) "
            "or give a hub id such as sambanovasystems/BLOOMChat-176B-v1"
        )
    return path, None  # a hub id


def configured_context(source: str) -> int | None:
    """The context a local model dir's ``config.json`` declares (``max_position_embeddings``), read before loading
    so that settings can be checked against it first; None when unknown (a hub id, an adapter, no such key)."""
    try:
        n = json.loads((Path(source) / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def tokenizer_source(source: str, adapter: dict | None) -> str:
    if adapter is not None and not any((Path(source) / f).is_file() for f in TOKENIZER_FILES):
        return adapter["base_model_name_or_path"]
    p = Path(source)
    if p.is_dir() and not any((p / f).is_file() for f in TOKENIZER_FILES):
        raise LoadError(
            f"--model {source}: no tokenizer files ({' or '.join(TOKENIZER_FILES)}); copy the "
            "tokenizer/ dir of the tokenization_prep output into it (training's final/ has them)"
        )
    return source


def quantization(quantize: str | None, device: str):
    if not quantize:
        return None
    if quantize not in typing.get_args(Quantization):
        raise LoadError(f"--quantize {quantize}: use 8bit or 4bit")
    if not device.startswith("cuda"):
        raise LoadError(f"--quantize {quantize} needs a CUDA GPU (bitsandbytes); drop it on the CPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise LoadError(f"--quantize {quantize} needs bitsandbytes: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=quantize == "8bit", load_in_4bit=quantize == "4bit")


def load_for_chat(path: str, device: str = "auto", dtype: str = "auto", quantize: str | None = None) -> Loaded:
    """The model (eval mode) and tokenizer, on ``device`` in ``dtype``; a LoRA adapter is merged into its base."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    source, adapter = resolve_source(path)
    tok_src = tokenizer_source(source, adapter)
    dev, spread = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    quant = quantization(quantize, dev)
    kwargs = {"use_safetensors": True, "trust_remote_code": False, "dtype": torch_dtype}
    if quant is not None:
        kwargs["quantization_config"] = quant
    if spread or quant is not None:
        kwargs["device_map"] = "auto" if spread else dev
    base = adapter["base_model_name_or_path"] if adapter else source
    try:
        model = AutoModelForCausalLM.from_pretrained(base, **kwargs)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, source).merge_and_unload()
        tokenizer = AutoTokenizer.from_pretrained(tok_src, trust_remote_code=False)
    except Exception as exc:  # corrupt weights, a bad config, an unreachable hub id: one line, never a traceback
        raise LoadError(f"--model {path}: cannot load ({type(exc).__name__}: {first_line(exc)})") from None
    if tokenizer.eos_token is None:
        raise LoadError(
            f"--model {path}: the tokenizer in {tok_src} has no eos_token, so no reply could end; "
            "use the tokenizer/ dir that tokenization_prep wrote"
        )
    if "device_map" not in kwargs:
        model.to(dev)
    model.eval()
    name = {v: k for k, v in DTYPES.items()}[torch_dtype] + (f" {quantize}" if quantize else "")
    return Loaded(model, tokenizer, dev, name, base)

"""Load the weights of the model to train in the training dtype, the way its DeepSpeed config will train it.

``load_model`` builds the model once. Under ZeRO-3 the model is created by transformers inside
``deepspeed.zero.Init`` (an ``HfDeepSpeedConfig`` stays alive) and every rank reads only its own partition of each
tensor from the safetensors files: no rank ever holds the whole model. Weights are read from safetensors only
(``safetensors_files``; never pickle), also by ``training.merge_lora``.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
from pathlib import Path

import torch

from common.errors import ConfigError, first_line
from training.preflight import DsFacts


def safetensors_files(source: str) -> list[Path]:
    """The safetensors files of a local dir or hub id (weights only; never pickle)."""
    path = Path(source)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(source, allow_patterns=["*.json", "*.safetensors"]))
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return sorted({path / f for f in json.loads(index.read_text())["weight_map"].values()})
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"model {source}: no .safetensors weights (pickle checkpoints are not loaded)")
    return files


def load_zero3_partitions(model, source: str) -> None:
    """Copy into each ZeRO-3 parameter's local partition (``ds_tensor``) only this rank's slice of the weights.

    ZeRO-3 keeps, per parameter, elements [r*P, (r+1)*P) of the flattened tensor on rank r. Each slice is read
    by whole leading rows through safetensors' lazy slicing, with the file opened per tensor so no mapping
    outlives its read.
    """
    from safetensors import safe_open

    where: dict[str, tuple[Path, list[int]]] = {}  # tensor name -> (file, shape), from the headers
    for f in safetensors_files(source):
        with safe_open(str(f), "pt") as st:
            where.update({k: (f, st.get_slice(k).get_shape()) for k in st.keys()})
    prefix = getattr(model, "base_model_prefix", "") + "."
    for name, param in model.named_parameters():
        key = name if name in where else name[len(prefix) :] if name.startswith(prefix) else None
        if key not in where:
            raise ConfigError(f"model {source}: weights have no tensor for {name}; is it a {type(model).__name__}?")
        path, shape = where[key]
        if math.prod(shape) != param.ds_numel:
            raise ConfigError(
                f"model {source}: {key} has shape {shape} but the model expects {tuple(param.ds_shape)}; "
                "the config does not match the weights"
            )
        part = param.ds_tensor
        size = part.ds_numel if hasattr(part, "ds_numel") else part.numel()
        start = size * param.ds_zero_partition_rank  # the rank within the parameter's partition group
        stop = min(start + size, param.ds_numel)
        with torch.no_grad():
            flat = part.view(-1)
            for lo, chunk in _read_flat(path, key, start, stop):
                flat[lo - start : lo - start + chunk.numel()].copy_(chunk)


def _read_flat(path: Path, key: str, start: int, stop: int, chunk_bytes: int = 16 * 1024**2):
    """Yield (flat offset, values) covering elements [start, stop) of a tensor, read by whole leading rows in
    pieces of at most ``chunk_bytes`` (plus one row), so the transient memory stays small for any tensor."""
    from safetensors import safe_open

    if stop <= start:
        return
    with safe_open(str(path), "pt") as st:
        sl = st.get_slice(key)
        shape = sl.get_shape()
        if len(shape) == 0:
            yield start, st.get_tensor(key).reshape(-1)[start:stop]
            return
        row = math.prod(shape[1:])
        step = max(1, chunk_bytes // (row * 4))
        for r0 in range(start // row, -(-stop // row), step):
            r1 = min(r0 + step, -(-stop // row))
            lo, hi = max(start, r0 * row), min(stop, r1 * row)
            yield lo, sl[r0:r1].reshape(-1)[lo - r0 * row : hi - r0 * row]


@contextlib.contextmanager
def large_allocations_returned():
    """While loading, glibc serves allocations of 1 MiB and more by mmap, so the full-size temporaries that
    zero.Init frees go back to the system instead of staying in a fragmented heap (seen: +0.2 x the fp32 model
    size on some ranks). Afterwards the threshold is set to 32 MiB, glibc's own upper bound, and freed memory
    is trimmed. No-op where libc has no mallopt (not glibc)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # both must exist (AttributeError otherwise)
    except (OSError, AttributeError):
        yield
        return
    m_mmap_threshold = -3
    libc.mallopt(m_mmap_threshold, 1 << 20)
    try:
        yield
    finally:
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.malloc_trim(0)


def zero3_empty_model(cls, config, ds: dict):
    """The model partitioned by ``deepspeed.zero.Init``, as transformers' ``_from_config`` builds it but without
    initialising weights that the checkpoint overwrites: no rank gathers whole modules, none holds the model."""
    import deepspeed
    from transformers.initialization import no_init_weights

    with no_init_weights(), deepspeed.zero.Init(config_dict_or_path=ds):
        model = cls(config)
    fp32_rotary_buffers(model)
    model.tie_weights()
    return model


def fp32_rotary_buffers(model) -> None:
    """Give every rotary embedding its fp32 ``inv_freq`` again, computed afresh outside ``zero.Init``.

    ``model.to(bf16)`` rounds every floating buffer, and ``zero.Init`` builds the ``torch.arange`` behind the
    frequencies in 16 bits: either way far positions get the wrong angles. transformers' own loading keeps them
    fp32; a model built from config here does too. Rotary modules are rebuilt from their config (no weights)."""
    for module in model.modules():
        own = dict(module.named_buffers(recurse=False))
        if "inv_freq" not in own or not hasattr(module, "config"):
            continue
        fresh = type(module)(config=module.config)
        for name, buf in fresh.named_buffers(recurse=False):
            module.register_buffer(name, buf.to(own["inv_freq"].device), persistent=name in fresh.state_dict())


def load_model(cls, config, source: str | None, facts: DsFacts, ds: dict, seed: int):
    """The model in the training dtype; under ZeRO-3 partitioned from the start. Returns (model, keepalive).

    The torch RNG is seeded first on every path: what draws from it next (a LoRA adapter's initialization, dropout)
    is then the same on every run of a stage, from a saved model too."""
    torch.manual_seed(seed)
    if facts.stage == 3:
        from transformers.integrations import HfDeepSpeedConfig

        keep = HfDeepSpeedConfig(ds)  # transformers sees ZeRO-3 while this object lives
        torch.manual_seed(seed)
        if not source:
            # transformers' own zero.Init path: the model's _init_weights on gathered modules (a plain cls(config)
            # inside zero.Init would leave embeddings at std 1.0)
            model = cls._from_config(config, dtype=facts.dtype)
            fp32_rotary_buffers(model)
            return model, keep
        with large_allocations_returned():
            model = zero3_empty_model(cls, config, ds)
            gc.collect()  # partitions of replaced (tied) parameters sit in reference cycles
            load_zero3_partitions(model, source)
        return model, keep
    if source:
        try:
            model = cls.from_pretrained(
                source, config=config, use_safetensors=True, trust_remote_code=False, dtype=facts.dtype
            )
        except Exception as exc:
            raise ConfigError(f"model {source}: cannot load as {cls.__name__} ({first_line(exc)})") from None
    else:
        torch.manual_seed(seed)
        model = cls(config).to(facts.dtype)
    fp32_rotary_buffers(model)
    return model, None

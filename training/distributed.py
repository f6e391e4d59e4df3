"""Process-group helpers for training: rank facts, global sums, batches onto the device, RNG state per rank.

Everything here works the same with one CPU process (gloo) and with many GPU processes (nccl), so the
trainer has no device- or world-size-specific branches.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from data_prep.atomic import atomic_write


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """Processes on this node (deepspeed sets LOCAL_SIZE, torchrun LOCAL_WORLD_SIZE)."""
    for key in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE"):
        if os.environ.get(key):
            return int(os.environ[key])
    return world_size()


def init_process_group() -> None:
    """Start torch.distributed through DeepSpeed (gloo on CPU, nccl on CUDA) and bind this rank to its device.

    The device is set first thing, so every collective and memory query afterwards runs on cuda:LOCAL_RANK (not
    cuda:0 on every rank). The timeout is DeepSpeed's (``DEEPSPEED_TIMEOUT`` minutes) but at least 60 minutes:
    ranks wait in a collective while rank 0 converts a large checkpoint for another number of processes.
    """
    import datetime

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    if torch.cuda.is_available():
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not torch.distributed.is_initialized():
        minutes = max(60, int(os.environ.get("DEEPSPEED_TIMEOUT", "60")))
        deepspeed.init_distributed(timeout=datetime.timedelta(minutes=minutes))


def comm_device() -> torch.device:
    """The device collectives run on here (the accelerator's current device: cuda:N, or cpu)."""
    from deepspeed.accelerator import get_accelerator

    return torch.device(get_accelerator().current_device_name())


def global_sum(values: list, device: torch.device) -> list[float]:
    """Sum a few numbers (floats or 0-d tensors) over all ranks in one all-reduce, in float64 on ``device``."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device) for v in values])
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t.tolist()


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a batch of CPU tensors to ``device``: pinned memory and non-blocking copies on CUDA."""
    if device.type == "cpu":
        return batch
    return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}


# ---- RNG state: every generator, per rank, saved without pickle ----


def rng_state() -> dict:
    """CPU, CUDA (when present), numpy and python RNG states as tensors, lists and ints only."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() else [],  # this rank's device
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "python": [py_version, list(py_state), py_gauss],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if torch.cuda.is_available() and state["torch_cuda"]:
        torch.cuda.set_rng_state(state["torch_cuda"][0])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))


def save_rng(path: Path) -> None:
    """Write this rank's RNG state atomically (torch.save of plain tensors/lists, loadable with weights_only)."""
    with atomic_write(path) as fh:
        torch.save(rng_state(), fh)


def load_rng(path: Path) -> None:
    set_rng_state(torch.load(path, weights_only=True))

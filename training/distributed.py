"""Process-group helpers for training: rank facts, global sums, batches onto the device, RNG state per rank.

Everything here works the same with one CPU process (gloo) and with many GPU processes (nccl), so the
trainer has no device- or world-size-specific branches.
"""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import socket
import time
from pathlib import Path

import numpy as np
import torch

from common.errors import ConfigError
from common.files import atomic_write


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
    """Start torch.distributed through DeepSpeed (gloo on CPU, nccl on CUDA), then bind this rank to its device.

    DeepSpeed (0.19) passes ``device_id=cuda:LOCAL_RANK`` to torch's ``init_process_group`` itself when there are
    several ranks, so NCCL binds its communicator to the right GPU; the current device is set right after, so
    every later collective and memory query runs on cuda:LOCAL_RANK (not cuda:0 on every rank). The timeout is
    DeepSpeed's (``DEEPSPEED_TIMEOUT`` minutes) but at least 60 minutes: ranks wait in a collective while rank 0
    converts a large checkpoint for another number of processes.
    """
    import datetime

    import deepspeed
    from deepspeed.accelerator import get_accelerator

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available() and local >= torch.cuda.device_count():
        raise ConfigError(
            f"LOCAL_RANK={local} but this process sees {torch.cuda.device_count()} GPU(s) (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); start one process per GPU with all of the node's "
            "GPUs visible to each (srun --gpus-per-node, not --gpus-per-task)"
        )
    if not torch.distributed.is_initialized():
        minutes = max(60, int(os.environ.get("DEEPSPEED_TIMEOUT", "60")))
        deepspeed.init_distributed(timeout=datetime.timedelta(minutes=minutes))
    if torch.cuda.is_available():
        get_accelerator().set_device(local)


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


def check_shared_dir(path: Path, what: str, read_only: bool = False) -> None:
    """Refuse, in one line before training, a directory that is not the same one on every rank (node-local disks).

    The trainer refuses node-local output rather than working on it: rank 0 alone deletes old checkpoints, moves
    ``latest`` and writes ``final/``, while every rank writes its own checkpoint files and reads them back on
    resume, so per-node copies would diverge or hang later. Put output_path on storage every node mounts (NFS,
    Lustre, ...). Rank 0 writes a marker with a random token; the all-reduce that hands the token to every rank
    starts only after that write (so it is the barrier), each rank reads the marker, and a second all-reduce
    collects who could not. ``read_only`` (data_dir, which the trainer only reads): nothing is written; every rank
    compares the names and sizes of the files it sees with rank 0's, so identical copies on each node pass.
    One process: returns at once.
    """
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() < 2:
        return
    path, device = Path(path), comm_device()
    me, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    marker, reason = None, ""
    if read_only:
        mine = _listing_fingerprint(path)
        ok = global_sum([mine if me == 0 else 0], device)[0] == mine
    else:
        token = 0
        if me == 0:
            token = secrets.randbits(52) | 1  # exact in the float64 all-reduce, never 0
            try:
                path.mkdir(parents=True, exist_ok=True)
                marker = path / f".shared-check-{token:x}"
                marker.write_text(str(token))
            except OSError as exc:
                token, reason = -1, f": {exc.strerror or exc}"
        token = int(global_sum([token], device)[0])
        if token < 0:
            raise ConfigError(f"{what} {path}: rank 0 cannot write there{reason}; give an output_path it can write")
        ok = _sees(path / f".shared-check-{token:x}", str(token))
    failed = [i for i, v in enumerate(global_sum([float(i == me and not ok) for i in range(world)], device)) if v]
    if marker is not None:
        marker.unlink(missing_ok=True)
    if failed:
        hosts = [None] * world
        torch.distributed.all_gather_object(hosts, socket.gethostname())
        who = f"rank {failed[0]} on host {hosts[failed[0]]}" + (
            f" (and {len(failed) - 1} other ranks)" if len(failed) > 1 else ""
        )
        if read_only:
            raise ConfigError(
                f"{what} {path} differs between ranks: {who} sees other files than rank 0 on {hosts[0]}; put {what} on "
                "storage every node mounts (NFS, Lustre, ...) or give every node the same copy"
            )
        raise ConfigError(
            f"{what} {path} is not shared: {who} cannot see rank 0's files (rank 0 on {hosts[0]}); put output_path "
            "(and data_dir) on storage every node mounts (NFS, Lustre, ...)"
        )


def _sees(marker: Path, token: str) -> bool:
    """Whether ``marker`` holds ``token``; a few short retries for a network filesystem's attribute cache."""
    for wait in (0.0, 0.1, 0.4, 1.0):
        time.sleep(wait)
        try:
            if marker.read_text() == token:
                return True
        except OSError:
            pass
    return False


def _listing_fingerprint(path: Path) -> int:
    """52 bits of a hash of every file's relative name and size under ``path`` (not their contents)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(f"{os.path.relpath(full, path)}\0{os.path.getsize(full)}\n".encode())
    return int(h.hexdigest()[:13], 16)


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


def refuse_together(refusal: Exception | None) -> None:
    """Raise on every rank if any rank refused before training (a ConfigError found before the process group
    started), so no rank is left waiting in a collective. Each rank says its own reason, or names the first
    rank that refused. One all-reduce of a world-sized vector; nothing for one process."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() < 2:
        if refusal is not None:
            raise refusal
        return
    flags = [0.0] * world_size()
    flags[rank()] = 1.0 if refusal is not None else 0.0
    refused = [r for r, f in enumerate(global_sum(flags, comm_device())) if f]
    if refusal is not None:
        raise refusal
    if refused:
        raise ConfigError(
            f"rank(s) {refused[:8]} refused to start (see rank {refused[0]}'s message); nothing was trained"
        )

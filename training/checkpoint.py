"""Checkpoints that resume exactly: DeepSpeed's engine state, every RNG of every rank, and the topology.

Layout of ``<output>/checkpoints/step{N}/``: DeepSpeed's files, ``rng_state_rank{r}.pt`` per rank (``latest``
is replaced atomically only after every rank finished writing, so it never names an incomplete checkpoint) and
``trainer_state.json`` (step, samples consumed, world size, micro batch, accumulation, ZeRO stage).
A resume is checked against ``trainer_state.json`` before any model is built; another number of processes
under ZeRO-1/2/3 goes through DeepSpeed's universal checkpoint (``{tag}_universal``, made once).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from deepspeed.checkpoint.constants import (
    UNIVERSAL_CHECKPOINT_INFO,
    UNIVERSAL_CHECKPOINT_VERSION_KEY,
    UNIVERSAL_CHECKPOINT_VERSION_VALUE,
)

from common.errors import ConfigError
from common.files import atomic_write
from training.distributed import comm_device, global_sum, load_rng, rank, save_rng

TOPOLOGY_KEYS = ("world_size", "micro_batch_size", "gradient_accumulation_steps", "zero_stage")


def topology(world: int, micro: int, accum: int, zero_stage: int) -> dict:
    return {
        "world_size": world,
        "micro_batch_size": micro,
        "gradient_accumulation_steps": accum,
        "zero_stage": zero_stage,
    }


def latest_tag(ckpt: Path) -> str:
    latest = ckpt / "latest"
    if not latest.is_file():
        raise ConfigError(f"--resume: no checkpoint in {ckpt}; run without --resume to start the stage")
    return latest.read_text().strip()


def check_resume(ckpt: Path, now: dict) -> dict:
    """The saved trainer state, if this run can continue it at the exact sample position; else one line.

    The step's loss does not depend on how its rows are split (see trainer.py), so a resume continues exactly
    when the global batch (micro x accumulation x processes) and the ZeRO stage are unchanged. Files that ZeRO
    partitioned for another number of processes are converted to DeepSpeed's universal checkpoint first
    (``state["universal"]``). Ranks new to the run keep their seeded RNG.
    """
    tag = latest_tag(ckpt)
    state_path = ckpt / tag / "trainer_state.json"
    if not state_path.is_file():
        raise ConfigError(
            f"--resume: {ckpt / tag} has no trainer_state.json (written by an older version); "
            "start the stage again without --resume"
        )
    state = json.loads(state_path.read_text())
    saved = state["topology"]
    diff = ", ".join(f"{k} {saved[k]} -> {now[k]}" for k in TOPOLOGY_KEYS if saved.get(k) != now[k])
    batch = lambda t: t["world_size"] * t["micro_batch_size"] * t["gradient_accumulation_steps"]  # noqa: E731
    why = (
        "the global batch changes"
        if batch(saved) != batch(now)
        else "the ZeRO stage changes"
        if saved["zero_stage"] != now["zero_stage"]
        else None
    )
    if why:
        raise ConfigError(
            f"--resume: checkpoint {ckpt / tag} was written with another topology ({diff}) and {why}; "
            f"resume with a global batch of {batch(saved)} rows (micro x accumulation x processes) "
            "and the same DeepSpeed config, or start the stage again without --resume"
        )
    kept = min(saved["world_size"], now["world_size"])
    missing = [r for r in range(kept) if not (ckpt / tag / f"rng_state_rank{r}.pt").is_file()]
    if missing:
        raise ConfigError(
            f"--resume: checkpoint {ckpt / tag} lacks the RNG state of rank(s) {missing}; "
            "it is incomplete, start the stage again without --resume"
        )
    state["universal"] = saved["world_size"] != now["world_size"] and now["zero_stage"] > 0
    return state


def to_universal(ckpt: Path, tag: str) -> str:
    """Convert ``tag`` to DeepSpeed's universal format once (rank 0; DeepSpeed's own ds_to_universal), beside it
    as ``{tag}_universal``; returns that tag. Written to a temp dir and renamed: never half-converted."""
    out = ckpt / f"{tag}_universal"
    last = ""
    if rank() == 0 and not out.is_dir():
        tmp = ckpt / f".{tag}_universal.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        workers = max(1, min(8, (os.cpu_count() or 2) // 2))
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "deepspeed.checkpoint.ds_to_universal",
                "--input_folder",
                str(ckpt / tag),
                "--output_folder",
                str(tmp),
                "--num_extract_workers",
                str(workers),
                "--num_merge_workers",
                str(max(1, workers // 4)),
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode:
            last = (r.stderr.strip().splitlines() or ["no output"])[-1]
        else:
            tmp.rename(out)
    (failed,) = global_sum([1.0 if last else 0.0], comm_device())  # every rank learns rank 0's outcome
    if failed:
        raise ConfigError(
            f"--resume: DeepSpeed could not convert {ckpt / tag} for another number of processes "
            f"({last or 'see rank 0'}); resume with the number of processes that wrote it"
        )
    return out.name


def save(engine, ckpt: Path, samples: int, topo: dict) -> None:
    """Every rank writes its RNG file and DeepSpeed's files; once all are done, rank 0 moves ``latest``."""
    step = engine.global_steps
    tag = f"step{step}"
    save_rng(ckpt / tag / f"rng_state_rank{rank()}.pt")
    state = {"step": step, "samples": samples, "topology": topo}
    if rank() == 0:
        with atomic_write(ckpt / tag / "trainer_state.json", "w") as fh:
            json.dump(state, fh, indent=2)
    # what DeepSpeed's ds_to_universal needs to convert this checkpoint for another number of processes
    universal = {UNIVERSAL_CHECKPOINT_INFO: {UNIVERSAL_CHECKPOINT_VERSION_KEY: UNIVERSAL_CHECKPOINT_VERSION_VALUE}}
    engine.save_checkpoint(str(ckpt), tag=tag, client_state={**state, **universal}, save_latest=False)
    torch.distributed.barrier()  # every rank's files are complete before ``latest`` names them
    if rank() == 0:
        with atomic_write(ckpt / "latest", "w") as fh:
            fh.write(tag)


def load(engine, ckpt: Path, state: dict, tag: str) -> None:
    """Restore DeepSpeed's state (from ``tag``: the checkpoint or its universal form) and this rank's RNGs."""
    path, _ = engine.load_checkpoint(str(ckpt), tag=tag)
    if path is None or engine.global_steps != state["step"]:
        raise ConfigError(f"--resume: DeepSpeed could not load {ckpt / tag}; start the stage again without --resume")
    rng = ckpt / latest_tag(ckpt) / f"rng_state_rank{rank()}.pt"  # beside the original, not the universal copy
    if rng.is_file():
        load_rng(rng)

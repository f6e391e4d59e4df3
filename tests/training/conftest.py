"""Fixtures for training tests: real data_prep output tokenized by tokenization_prep at a short length."""

import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from common.cli import guard
from data_prep.jobs import prepare_oa_dolly, subsample_openchatkit
from tests.conftest import OASST_TREES, OIG_JOKES, ROOT, tokenize

SEQ = 128


@pytest.fixture(scope="session")
def token_dirs(tmp_path_factory):
    """(stage-1 OIG dir, stage-2 OASST dir) of packed HDF5 with a dev split, Pythia tokenizer, length 128."""
    base = tmp_path_factory.mktemp("tok")
    oig, oa = base / "oig.jsonl", base / "oa.jsonl"
    subsample_openchatkit(oig, str(OIG_JOKES), sample_size=200)
    prepare_oa_dolly(oa, None, str(OASST_TREES))
    dirs = []
    for src in (oig, oa):
        out = base / (src.stem + "_out")
        tokenize(src, out, SEQ, "greedy::truncate_left")
        dirs.append(out)
    return dirs


def write_stage(directory: Path, name: str, data_dir, **over) -> Path:
    """A tiny stage YAML ``directory/NAME.yaml`` whose output_path is ``directory/ckpt/NAME``."""
    cfg = {
        "name": name,
        "data_dir": str(data_dir),
        "output_path": str(directory / "ckpt" / name),
        "model": {"kind": "pythia", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 4}},
        "deepspeed": "training/configs/ds/cpu.json",
        "epochs": 1,
        "max_steps": 6,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 2,
        "lr": 1e-3,
        "save_every": 3,
        "eval_every": 3,
        "seed": 3,
    }
    cfg.update(over)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def stage_config(tmp_path):
    """Write a tiny stage YAML; returns a function(name, data_dir, **overrides) -> path."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return lambda name, data_dir, **over: write_stage(tmp_path, name, data_dir, **over)


def run_in_process(main, *argv) -> tuple[int, str, str]:
    """A command's ``main`` under ``common.cli.guard`` in this process, as ``python -m training COMMAND`` runs it:
    (exit status, stdout, stderr). Environment variables it sets (the rendezvous) are undone afterwards."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = guard(main, [str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")
LAUNCH_PREFIXES = ("OMPI_COMM_WORLD_", "MV2_COMM_WORLD_", "PMI_", "MPI_LOCAL", "SLURM_", "TORCHELASTIC_")


def stage_env(procs: int = 1) -> dict:
    """The environment for a stage subprocess: CPU DeepSpeed, no rendezvous or launcher variables from outside
    (a test suite run under srun or mpirun must not make a one-process stage a rank of that job)."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith(LAUNCH_PREFIXES)}
    return {**env, "DS_ACCELERATOR": "cpu", **({"OMP_NUM_THREADS": "1"} if procs > 1 else {})}


def stage_command(config, *extra) -> list[str]:
    """``python -m training run`` for one process."""
    return [sys.executable, "-m", "training", "run", "--config", str(config), *extra]


def run_stage(config, *extra, timeout: int = 600) -> subprocess.CompletedProcess:
    """A stage in a process of its own, as a user runs it."""
    return subprocess.run(
        stage_command(config, *extra), cwd=ROOT, capture_output=True, text=True, env=stage_env(), timeout=timeout
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def final_weights(final) -> dict:
    from safetensors.torch import load_file

    return load_file(str(final / "model.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)

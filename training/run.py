"""``python -m training run --config training/configs/stage1_oig.yaml [--resume]``: train one stage.

Launch with plain ``python`` (one process), ``deepspeed`` or ``torchrun`` (several processes, or nodes), Open MPI's
or MPICH's ``mpirun``, or Slurm's ``srun``: rank, world size and rendezvous come from the launcher's own variables.
"""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import BaseModel, ConfigDict, Field

from common.cli import guard
from common.errors import ConfigError
from common.settings import add_settings, build, command_parser
from training.config import StageConfig, load_config
from training.launch import export


def launch_env() -> None:
    """Export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from the launcher's own variables (torchrun, deepspeed, mpirun,
    srun) before DeepSpeed starts, so it takes the env:// path and needs no mpi4py (training.launch says how)."""
    placement = export()
    if placement.world_size > 1 and placement.rank == 0:
        local = f", {placement.local_world_size} per node" if placement.local_world_size else ""
        print(
            f"{placement.world_size} processes ({placement.launcher}{local}); rendezvous at "
            f"{placement.master_addr}:{os.environ['MASTER_PORT']}",
            flush=True,
        )


class RunFlags(BaseModel):
    """The run command's own flags. The stage's settings are its YAML (``StageConfig``); a flag named in
    ``STAGE_FLAGS`` overrides one of them for this run, with the field's own help and bounds."""

    model_config = ConfigDict(extra="forbid")
    config: str = Field(description="stage YAML (see training/configs/)", json_schema_extra={"metavar": "FILE.yaml"})
    resume: bool = Field(False, description="continue from the stage's last checkpoint")
    overwrite_output_path: bool = Field(
        False, description="train again into an output_path that holds a finished stage (final/)"
    )


STAGE_FLAGS = ("max_steps", "eval_rows")


def make_parser() -> argparse.ArgumentParser:
    ap = command_parser("python -m training run", __doc__, RunFlags)
    add_settings(ap, StageConfig, exclude=[name for name in StageConfig.model_fields if name not in STAGE_FLAGS])
    ap.add_argument("--local_rank", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # deepspeed's
    return ap


def parse(argv=None) -> tuple[RunFlags, StageConfig]:
    """The run's flags and its stage config (the YAML with the command line's overrides), checked."""
    given = vars(make_parser().parse_args(argv))
    given.pop("local_rank", None)  # the deepspeed launcher's; the rank comes from the environment (launch_env)
    overrides = {name: given.pop(name) for name in STAGE_FLAGS if name in given}
    flags = build(RunFlags, given)
    return flags, load_config(flags.config, **overrides)


def main(argv=None) -> int:
    flags, cfg = parse(argv)
    final = cfg.out_dir / "final"
    if final.is_dir() and not (flags.resume or flags.overwrite_output_path):
        raise ConfigError(
            f"output_path {cfg.out_dir} already holds a finished stage ({final}); pass --overwrite_output_path to "
            "train it again, or set another output_path"
        )
    try:
        launch_env()
        if not _has_cuda():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        # imported here: DeepSpeed (imported with the trainer) picks its accelerator from DS_ACCELERATOR once
        from training.trainer import StageRunner

        runner = StageRunner(cfg, resume=flags.resume)  # checks data, init_from and model before DeepSpeed starts
        final = runner.run()
        import deepspeed

        deepspeed.comm.barrier()
        deepspeed.comm.destroy_process_group()
    finally:
        release_shm_buffer()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"stage {cfg.name}: {runner.engine.global_steps} steps; final model in {final}")
    return 0


def release_shm_buffer() -> None:
    """Remove this rank's shared-memory all-reduce buffer: DeepSpeed's CPU comm op creates one per rank and run
    (``/dev/shm/deepspeed_allreduce_buffer_{uid}_{addr}_{port}_{rank}``, 66 MB) and never unlinks it."""
    if "MASTER_PORT" not in os.environ:
        return
    name = (
        f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
        f"{os.environ['MASTER_PORT']}_{os.environ.get('RANK', '0')}"
    )
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except OSError:
        pass  # not created (one process, CUDA) or already gone


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def exit_process(code: int) -> None:
    """Exit with ``code``; under several processes skip interpreter teardown (see below)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # every file is closed and the process group destroyed: skip interpreter teardown, where a collective's
        # C++ thread still joinable at exit sometimes aborts the rank ("terminate called without an active
        # exception", launcher exit 250) after a complete run
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    exit_process(guard(main))

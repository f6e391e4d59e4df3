"""``python -m training.run --config training/configs/stage1_oig.yaml [--resume]``: run one stage.

Launch with plain ``python`` (one process), ``deepspeed`` or ``torchrun`` (several processes, or nodes), Open MPI's
or MPICH's ``mpirun``, or Slurm's ``srun``: rank, world size and rendezvous come from the launcher's own variables.
"""

from __future__ import annotations

import argparse
import os
import sys

from common.cli import guard


def launch_env() -> None:
    """Export RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* from the launcher's own variables (torchrun, deepspeed, mpirun,
    srun) before DeepSpeed starts, so it takes the env:// path and needs no mpi4py (training.launch says how)."""
    from training.launch import export

    placement = export()
    if placement.world_size > 1 and placement.rank == 0:
        local = f", {placement.local_world_size} per node" if placement.local_world_size else ""
        print(
            f"{placement.world_size} processes ({placement.launcher}{local}); rendezvous at "
            f"{placement.master_addr}:{os.environ['MASTER_PORT']}",
            flush=True,
        )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.run", description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="stage YAML (see training/configs/)")
    ap.add_argument("--resume", action="store_true", help="continue from the stage's last checkpoint")
    ap.add_argument(
        "--overwrite", action="store_true", help="train again into an output_dir that holds a finished stage (final/)"
    )
    ap.add_argument("--max-steps", type=int, default=None, help="override the config's max_steps (quick runs)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    args = ap.parse_args(argv)

    from common.errors import ConfigError
    from training.config import load_config

    try:
        cfg = load_config(args.config)
        if args.max_steps is not None:
            if args.max_steps < 1:
                raise ConfigError("--max-steps must be at least 1")
            cfg.max_steps = args.max_steps
        final = cfg.out_dir / "final"
        if final.is_dir() and not (args.resume or args.overwrite):
            raise ConfigError(
                f"output_dir {cfg.out_dir} already holds a finished stage ({final}); pass --overwrite to train it "
                "again, or set another output_dir"
            )
        launch_env()
        if not _has_cuda():
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from training.trainer import StageRunner

        runner = StageRunner(cfg, resume=args.resume)  # checks data, init_from and model before DeepSpeed starts
        final = runner.run()
        import deepspeed

        deepspeed.comm.barrier()
        deepspeed.comm.destroy_process_group()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
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

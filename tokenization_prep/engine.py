"""Where a run's tasks (``shards.py``) run: ``local``, in this process or ``--num_workers`` forked processes, or
``ray``, as Ray tasks on a cluster (``--ray_address``; a local one when none is given). Same tasks, same bytes out.

``map`` keeps at most ``window`` tasks in flight and yields results in task order, pulling the next task only when
one is done, so a caller can change what it sends next from what came back (the shards after a malformed line are
only checked). A worker that dies stops the run with one line; the caller removes what the run wrote.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import tempfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Iterator

from common.errors import ConfigError, DataError, UserError, first_line

ROOT = Path(__file__).resolve().parents[1]  # the project: what Ray workers import our modules from
RAY_FIX = "install it with `bash scripts/install_ray.sh` (or `pip install '.[ray]'`), or use --engine local"


def available_cores() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _one_thread() -> None:
    """A worker is one core: the Rust tokenizer's thread pool gets one thread (set before its first encode)."""
    os.environ["RAYON_NUM_THREADS"] = "1"


class LocalEngine:
    """Tasks in this process (one worker) or in a pool of forked processes (started on first use, so the workers
    inherit the run's loaded tokenizer)."""

    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    def map(self, fn: Callable, tasks: Iterable, window: int | None = None) -> Iterator:
        if self.workers <= 1:
            for task in tasks:
                yield fn(task)
            return
        if self.pool is None:
            ctx = multiprocessing.get_context("fork")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_one_thread)
        pending: deque = deque()
        window = window or 2 * self.workers
        try:
            for task in tasks:
                pending.append(self.pool.submit(fn, task))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            self.close()
            raise DataError(
                "a tokenization worker process died (killed, or out of memory?); the run stopped and its output "
                "was removed: rerun (fewer --num_workers if memory is short)"
            ) from None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


class RayEngine:
    """Tasks as Ray tasks (no retries: a lost worker stops the run), on the cluster at ``address`` (``ray start
    --head``'s HOST:PORT, or ``auto``) or on a local one started for the run with ``workers`` CPUs. Workers import
    this project from its path (put before theirs), so on a cluster every node needs the project, the inputs, the
    tokenizer and the output directory at the same paths (shared storage)."""

    name = "ray"

    def __init__(self, workers: int, address: str | None):
        try:
            import ray
        except ImportError:
            raise ConfigError(f"--engine ray: Ray is not installed; {RAY_FIX}") from None
        self.ray, self.workers, self.temp = ray, workers, None
        self.started = not ray.is_initialized()
        if not self.started:
            return
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        fix = "start one with `ray start --head` and pass --ray_address HOST:PORT, or use --engine local"
        if address and address != "auto":
            probe(address, where, fix)
        # the project first, then what the workers had (a PYTHONPATH without ${PYTHONPATH} would hide Ray itself)
        env = {"env_vars": {"PYTHONPATH": f"{ROOT}{os.pathsep}${{PYTHONPATH}}", "RAYON_NUM_THREADS": "1"}}
        options = {"address": address}
        if not address:  # a new local cluster (not one already running here), quiet, its files under a short path
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            self.temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
            options = {
                "address": "local",
                "num_cpus": workers,
                "object_store_memory": 256 * 2**20,
                "include_dashboard": False,
                "_temp_dir": self.temp,
            }
        if not address:  # a local cluster inherits this environment: no runtime env to set up for each worker
            paths = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
            os.environ.update(PYTHONPATH=os.pathsep.join(paths), RAYON_NUM_THREADS="1")
            env = None
        try:
            ray.init(runtime_env=env, log_to_driver=False, logging_level="error", **options)
        except Exception as exc:  # ConnectionError, RuntimeError, ValueError ... by version and cause
            self.close()
            raise ConfigError(f"--engine ray: cannot start or reach {where} ({first_line(exc)}); {fix}") from None
        if address:
            self.workers = int(ray.cluster_resources().get("CPU", workers))

    def map(self, fn: Callable, tasks: Iterable, window: int | None = None) -> Iterator:
        ray = self.ray
        remote = ray.remote(max_retries=0, num_cpus=1)(fn)
        pending: deque = deque()

        def get(ref):
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the task raised: a user error stays one line
                cause = getattr(exc, "cause", None)
                if isinstance(cause, UserError):
                    raise cause from None
                raise
            except ray.exceptions.RayError as exc:
                raise DataError(
                    f"a Ray worker died ({type(exc).__name__}); the run stopped and its output was removed: rerun"
                ) from None

        for task in tasks:
            pending.append(remote.remote(task))
            if len(pending) >= (window or 2 * self.workers):
                yield get(pending.popleft())
        while pending:
            yield get(pending.popleft())

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
        if self.temp:
            shutil.rmtree(self.temp, ignore_errors=True)
            self.temp = None


def probe(address: str, where: str, fix: str) -> None:
    """Fail fast on a cluster address nothing answers at (Ray itself retries for minutes)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except ValueError:
        raise ConfigError(f"--ray_address {address}: give HOST:PORT (or auto)") from None
    except OSError as exc:
        raise ConfigError(f"--engine ray: nothing answers at {where} ({exc.strerror or exc}); {fix}") from None


def make_engine(engine: str, workers: int | None, address: str | None = None) -> LocalEngine | RayEngine:
    """The engine a run's settings name, with ``workers`` processes (default: every core this process may use)."""
    workers = workers or available_cores()
    if engine == "ray":
        return RayEngine(workers, address)
    if address:
        raise ConfigError("--ray_address is for --engine ray; drop it or add --engine ray")
    return LocalEngine(workers)

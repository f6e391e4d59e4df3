"""Where a run's tasks (``shards.py``) run: ``local``, in this process or ``--num_workers`` forked processes, or
``ray``, as Ray tasks on a cluster (``--ray_address``; a local one when none is given). Same tasks, same bytes out.

``map`` keeps at most ``window`` tasks in flight and yields results in task order, pulling the next task only when
one is done, so a caller can change what it sends next from what came back (the shards after a malformed line are
only checked). A worker that dies stops the run with one line; the caller removes what the run wrote.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Callable, Iterable, Iterator

from common.errors import ConfigError, DataError, UserError

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
    """Tasks as Ray tasks (no retries: a lost worker stops the run), on the cluster at ``address`` or a local one
    started for the run. Workers import this project from its path, so on a cluster every node needs the
    project, the inputs, the tokenizer and the output directory at the same paths (shared storage)."""

    name = "ray"

    def __init__(self, workers: int, address: str | None):
        try:
            import ray
        except ImportError:
            raise ConfigError(f"--engine ray: Ray is not installed; {RAY_FIX}") from None
        self.ray, self.workers = ray, workers
        self.started = not ray.is_initialized()
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path[1:]]), "RAYON_NUM_THREADS": "1"}}
        try:
            if self.started:
                options = {} if address else {"num_cpus": workers, "include_dashboard": False}
                ray.init(address=address, runtime_env=env, log_to_driver=False, logging_level="ERROR", **options)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError ... by version
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise ConfigError(
                f"--engine ray: cannot reach {where} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                "start one with `ray start --head` and pass --ray_address HOST:PORT, or use --engine local"
            ) from None
        self._remote: dict[Callable, object] = {}

    def map(self, fn: Callable, tasks: Iterable, window: int | None = None) -> Iterator:
        ray = self.ray
        remote = self._remote.setdefault(fn, ray.remote(max_retries=0, num_cpus=1)(fn))
        window = window or 2 * max(self.workers, int(ray.cluster_resources().get("CPU", 1)))
        pending: deque = deque()

        def get(ref):
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
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
            if len(pending) >= window:
                yield get(pending.popleft())
        while pending:
            yield get(pending.popleft())

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()


def make_engine(engine: str, workers: int | None, address: str | None = None) -> LocalEngine | RayEngine:
    """The engine a run's settings name, with ``workers`` processes (default: every core this process may use)."""
    workers = workers or available_cores()
    if engine == "ray":
        return RayEngine(workers, address)
    if address:
        raise ConfigError("--ray_address is for --engine ray; drop it or add --engine ray")
    return LocalEngine(workers)

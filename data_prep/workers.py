"""Runs the quality pass's pure half (``quality.Analyzer``) over chunks of conversations, in worker processes.

The main process reads ``READ_AHEAD`` chunks ahead of the one it decides (in input order), so the workers stay busy
while it reads, decides and writes. The schedule is the same with one process (its chunks are analyzed when
decided), so the outputs and the rejects file (read errors interleave with quality drops) are the same bytes for
any ``--num_workers``. Workers are forked once a second chunk exists (a small input never pays for them; the first
chunk then goes to them too) and inherit the analyzer, its fastText model and its eval n-grams, so nothing large is
pickled; a chunk's texts go out and its analyses come back packed (``quality.pack``: plain tuples and one array per
sketch field, ~3x cheaper to pickle than the dataclasses).
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Iterable, Iterator

from common.errors import DataError
from data_prep.quality import Analysis, Analyzer, pack, unpack

CHUNK = 256  # conversations per task: big enough to amortize the pickling, small enough to keep both sides busy
READ_AHEAD = 3  # chunks read (and sent out) beyond the one being decided: workers on this many chunks at most
_ANALYZER: Analyzer | None = None  # the forked workers' analyzer


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _analyze_chunk(payload: list[tuple[list[str], list[str]]]) -> tuple:
    return pack(_ANALYZER.analyze_many(payload))


class _Task:
    """One chunk's analyses: in this process when ``get`` comes before any pool (``sent`` is None), else the pool's."""

    def __init__(self, analyzer: Analyzer, payload):
        self.analyzer, self.payload, self.sent = analyzer, payload, None

    def send(self, pool) -> None:
        self.sent = pool.submit(_analyze_chunk, self.payload)
        self.payload = None

    def get(self) -> list[Analysis]:
        if self.sent is None:
            return self.analyzer.analyze_many(self.payload)
        try:
            return unpack(self.sent.result())
        except BrokenProcessPool:
            raise DataError(
                "a quality-pass worker process died (killed, or out of memory?); nothing was written: rerun, or "
                "pass --num_workers 1 to run the pass in one process"
            ) from None


class ChunkRunner:
    """Submits chunks to the analyzer: in this process with one worker (or a single chunk), else to a pool of
    ``workers`` forked processes, started when the second chunk is submitted."""

    def __init__(self, analyzer: Analyzer, workers: int):
        self.analyzer, self.workers = analyzer, workers
        self.pool = None
        self._first: _Task | None = None  # the first chunk, held until a second one starts the pool

    def submit(self, payload: list[tuple[list[str], list[str]]]) -> _Task:
        global _ANALYZER
        task = _Task(self.analyzer, payload)
        if self.workers <= 1:
            return task
        if self.pool is None:
            if self._first is None:
                self._first = task
                return task
            _ANALYZER = self.analyzer
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"))
            if self._first.sent is None and self._first.payload is not None:
                self._first.send(self.pool)
        task.send(self.pool)
        return task

    def run(self, items: Iterable, payload) -> Iterator[tuple[list, list[Analysis]]]:
        """(chunk, its analyses) for each chunk of ``items`` in order; ``payload(chunk)`` is what the analyzer gets."""
        pending: deque = deque()
        for chunk in chunks(items):
            pending.append((chunk, self.submit(payload(chunk))))
            while len(pending) > READ_AHEAD:
                chunk_, task = pending.popleft()
                yield chunk_, task.get()
        while pending:
            chunk_, task = pending.popleft()
            yield chunk_, task.get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def chunks(items: Iterable, size: int | None = None) -> Iterator[list]:
    """Lists of ``size`` (default ``CHUNK``) items, the last may be shorter."""
    size, chunk = size or CHUNK, []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

"""Runs the quality pass's pure half (``quality.Analyzer``) over chunks of conversations, in worker processes.

The main process reads chunk k+1 while the workers analyze chunk k, then decides chunk k in input order. The schedule
(read one chunk ahead, then decide) is the same with one process, so the outputs and the rejects file are the same
bytes for any ``--num_workers``. Workers are forked once a second chunk exists (a small input never pays for them)
and inherit the analyzer, its fastText model and its eval n-grams, so nothing large is pickled; a chunk's texts go
out and its analyses (a language code, PII counts, a MinHash sketch) come back.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Iterable, Iterator

from data_prep.quality import Analysis, Analyzer

CHUNK = 512  # conversations per task: big enough to amortize the pickling, small enough to keep both sides busy
_ANALYZER: Analyzer | None = None  # the forked workers' analyzer


def default_workers() -> int:
    """The cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _analyze_chunk(payload: list[tuple[list[str], list[str]]]) -> list[Analysis]:
    return _ANALYZER.analyze_many(payload)


class _Done:
    """An in-process result with the ``AsyncResult.get`` shape."""

    def __init__(self, value):
        self.value = value

    def get(self):
        return self.value


class ChunkRunner:
    """Submits chunks to the analyzer: in this process for the first chunk (and always with one worker), then to a
    pool of ``workers`` forked processes."""

    def __init__(self, analyzer: Analyzer, workers: int):
        self.analyzer, self.workers = analyzer, workers
        self.submitted = 0
        self.pool = None

    def submit(self, payload: list[tuple[list[str], list[str]]]):
        global _ANALYZER
        self.submitted += 1
        if self.workers <= 1 or self.submitted == 1:
            return _Done(self.analyzer.analyze_many(payload))
        if self.pool is None:
            _ANALYZER = self.analyzer
            self.pool = multiprocessing.get_context("fork").Pool(self.workers)
        return self.pool.apply_async(_analyze_chunk, (payload,))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
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

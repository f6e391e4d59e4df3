"""The parallel halves of a pipeline run as tasks: tokenizing a shard (a contiguous run of a split's lines) into its
own token files, and writing one HDF5 file from its packed rows.

A task carries all it needs and pickles small (the lines' byte offsets, not their text; only the articles its rows
use), so it runs the same in this process, in a forked worker or as a Ray task (``engine.py``), and the output does
not depend on where or on how many: the shards' stores joined in order are what one pass over the split would have
stored (``TokenStore.concat``), and what gets packed is planned from that, in one place (``split_job.py``).
"""

from __future__ import annotations

import os
from array import array
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil

from tokenization_prep.articles import ArticleTokenizer, InputFormatError, parse_line
from tokenization_prep.hdf5_io import TokenStore, write_hdf5
from tokenization_prep.inputs import LineIndex, read_lines
from tokenization_prep.packing import Plan
from tokenization_prep.settings import ArticleSettings
from tokenization_prep.tokenize_split import BadLines, SplitMetrics, tokenize_into
from tokenization_prep.tokenizer_io import tokenizer_for_data

MIN_SHARD_LINES, MAX_SHARD_LINES = 256, 8192  # small enough to spread a split over the workers, big to amortize


@dataclass(frozen=True)
class TokenizerSpec:
    """How to load the run's tokenizer (``tokenizer_io.tokenizer_for_data``): where each worker loads it from."""

    path: str
    special_tokens_dict: str | None = None
    apply_chat_template: bool = False


_LOADED: dict[TokenizerSpec, tuple] = {}  # this process's tokenizers: forked workers inherit the run's


def load_tokenizer(spec: TokenizerSpec) -> tuple:
    """(tokenizer, chat renderer or None) of ``spec``, loaded once per process."""
    if spec not in _LOADED:
        _LOADED[spec] = tokenizer_for_data(spec.path, spec.special_tokens_dict, spec.apply_chat_template)
    return _LOADED[spec]


@contextmanager
def run_tokenizer(spec: TokenizerSpec) -> Iterator[tuple]:
    """The run's tokenizer, loaded fresh and kept for its workers until the run ends."""
    _LOADED.pop(spec, None)
    try:
        yield load_tokenizer(spec)
    finally:
        _LOADED.pop(spec, None)


@dataclass
class ShardTask:
    """A contiguous run of one split's lines, by file, byte offset and line number, each with its output file."""

    split: str
    index: int  # the shard's place in the split
    files: list[str]  # every input file, as given
    file_index: np.ndarray
    offsets: np.ndarray
    line_numbers: np.ndarray
    tags: np.ndarray  # the output file of the split each line goes to
    tokenizer: TokenizerSpec
    article: ArticleSettings  # without chat_render: the worker makes it from the tokenizer
    ignore_errors: bool
    store_dir: str
    cwd: str = field(default_factory=os.getcwd)  # the run's: relative input names are read from there
    check_only: bool = False  # an earlier shard had a malformed line: only find and count this shard's

    def lines(self) -> Iterator[tuple[str, int, bytes, int]]:
        read = read_lines(self.files, self.file_index, self.offsets, self.line_numbers, self.cwd)
        return ((file, line, raw, tag) for (file, line, raw), tag in zip(read, self.tags.tolist()))


@dataclass
class ShardResult:
    store: TokenStore | None  # None when the shard had a malformed line (or was only checked)
    metrics: SplitMetrics
    skipped: list[bytes] = field(default_factory=list)  # lines skipped under --ignore_input_format_error
    bad: BadLines = field(default_factory=BadLines)
    worker_mb: float = 0.0  # the worker's own memory when done (``own_memory_mb``)


def own_memory_mb() -> float:
    """This process's own memory in MB (USS: pages no other process shares, so a forked worker's copy-on-write
    inheritance from the main process is not counted), what a worker adds."""
    return psutil.Process().memory_full_info().uss / 2**20


def shard_tasks(
    split: str,
    parts: list[np.ndarray],
    lines: LineIndex,
    spec: TokenizerSpec,
    article: ArticleSettings,
    ignore_errors: bool,
    store_dir: Path,
    workers: int,
) -> list[ShardTask]:
    """A split's lines (its output files' ``parts`` in order) cut into contiguous shards, about four per worker."""
    positions = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    tags = np.repeat(np.arange(len(parts), dtype=np.int32), [len(p) for p in parts])
    size = int(np.clip(-(-len(positions) // (4 * workers)), MIN_SHARD_LINES, MAX_SHARD_LINES))
    files = [str(p) for p in lines.files]
    article = article.model_copy(update={"chat_render": None})
    return [
        ShardTask(
            split,
            k,
            files,
            lines.file_index[positions[lo : lo + size]],
            lines.offsets[positions[lo : lo + size]],
            lines.line_numbers[positions[lo : lo + size]],
            tags[lo : lo + size],
            spec,
            article,
            ignore_errors,
            str(Path(store_dir).resolve()),
        )
        for k, lo in enumerate(range(0, len(positions), size))
    ]


def tokenize_shard(task: ShardTask) -> ShardResult:
    """Parse, encode and store a shard's lines (one core: the workers are the parallelism)."""
    bad = BadLines(order={f: i for i, f in enumerate(task.files)})
    metrics = SplitMetrics()
    tok, render = load_tokenizer(task.tokenizer)
    article = task.article.model_copy(update={"chat_render": render}) if render else task.article
    if task.check_only:
        for file, line, raw, _ in task.lines():
            metrics.lines += 1
            try:
                parse_line(raw, article)
            except InputFormatError as exc:
                bad.add(file, line, str(exc))
        return ShardResult(None, metrics, bad=bad, worker_mb=own_memory_mb())
    store, skipped = TokenStore(Path(task.store_dir), f"{task.split}.{task.index:06d}"), []
    try:
        tokenize_into(
            task.lines(),
            ArticleTokenizer(tok, article),
            store,
            metrics,
            task.ignore_errors,
            skipped,
            desc=None,
            bad=bad,
            pipelined=False,
        )
    except BaseException:
        store.cleanup()
        raise
    if bad.count:
        store.cleanup()
        return ShardResult(None, metrics, skipped, bad, own_memory_mb())
    store.close()
    return ShardResult(store, metrics, skipped, bad, own_memory_mb())


@dataclass
class FileTask:
    """One HDF5 file: its rows (a plan over ``store``, a subset of the split's store) and how to write them."""

    path: str
    store: TokenStore
    plan: Plan
    max_len: int
    pad_id: int
    category_ids: dict[int, int] | None
    truncated: np.ndarray  # per article of ``store``: it lost tokens somewhere in the split


def file_task(path: Path, store: TokenStore, rows: Plan, max_len: int, pad_id: int, cat_ids, truncated) -> FileTask:
    """The task writing ``rows`` (a plan over the split's store) to ``path``, with only the articles they use."""
    used, local = np.unique(np.frombuffer(rows.art, dtype=np.int32), return_inverse=True)
    plan = Plan()
    plan.art, plan.start, plan.end, plan.bounds = (
        array("i", local.astype(np.int32).tobytes()),
        rows.start,
        rows.end,
        rows.bounds,
    )
    return FileTask(str(Path(path).resolve()), store.subset(used), plan, max_len, pad_id, cat_ids, truncated[used])


def write_file(task: FileTask) -> float:
    """Write one HDF5 file (atomically: temp name, then rename); return the worker's own memory (MB) when done."""
    try:
        write_hdf5(Path(task.path), task.store, task.plan, task.max_len, task.pad_id, task.category_ids, task.truncated)
    finally:
        task.store.close()
    return own_memory_mb()

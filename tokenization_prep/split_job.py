"""A run's splits (train and dev) as jobs: every split's lines tokenized in shards by the run's engine
(``shards.py``, ``engine.py``), then each split mixed (``--mix``, train only), packed, balanced into near-equal files
and written as ``{split}_{i}_of_{N}.hdf5``, one task per file.

Each output file's lines are tokenized and packed on their own, as gdp does (``bfd`` packs the whole split, then
cuts it into files). The packing is planned here, in one process, from the articles' lengths; tokens wait in the
shards' on-disk stores until the files are written.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from common.errors import DataError
from tokenization_prep.engine import LocalEngine
from tokenization_prep.hdf5_io import TokenStore
from tokenization_prep.mixing import realized, select, trainable_supervised
from tokenization_prep.packing import Plan
from tokenization_prep.settings import PipelineConfig
from tokenization_prep.shards import FileTask, ShardTask, file_task, tokenize_shard
from tokenization_prep.splits import balance, chunks
from tokenization_prep.tokenize_split import (
    BadLines,
    SplitMetrics,
    category_table,
    lost_articles,
    pack_store,
    record_sequences,
)


@dataclass
class Tokenized:
    """One split's tokens: the shards' stores joined, the counts, the lines skipped as malformed."""

    store: TokenStore
    metrics: SplitMetrics
    skipped: list[bytes]
    worker_mb: float  # the most memory a worker held of its own after a shard (``shards.own_memory_mb``)


def tokenize_splits(engine: LocalEngine, shards: dict[str, list[ShardTask]], files: list[str]) -> dict[str, Tokenized]:
    """Every split's shards through the engine (train first); a malformed line stops the run once every line is
    read, naming the first in file order and the count (the shards after it are only checked, not tokenized)."""
    bad = BadLines(order={f: i for i, f in enumerate(files)})
    tasks = [t for split in shards for t in shards[split]]
    results: dict[str, list] = {split: [] for split in shards}
    bar = tqdm(
        total=sum(len(t.offsets) for t in tasks),
        desc="tokenizing",
        unit="line",
        mininterval=1.0,
        file=sys.stderr,
        disable=None,
    )  # off without a tty
    try:
        for task, result in zip(
            tasks, engine.map(tokenize_shard, (replace(t, check_only=bool(bad.count)) for t in tasks))
        ):
            bad.merge(result.bad)
            results[task.split].append(result)
            bar.update(len(task.offsets))
    finally:
        bar.close()
        stores = [r.store for rs in results.values() for r in rs if r.store is not None]
    if bad.count:
        for store in stores:
            store.cleanup()
        raise bad.error()
    out = {}
    for split, rs in results.items():
        metrics = SplitMetrics()
        for r in rs:
            metrics.merge(r.metrics)
        out[split] = Tokenized(
            TokenStore.concat([r.store for r in rs]),
            metrics,
            [x for r in rs for x in r.skipped],
            max(r.worker_mb for r in rs),
        )
    return out


@dataclass(frozen=True)
class SplitJob:
    """How one split is packed into files: ``plan`` turns its tokens into one write task per output file."""

    split: str  # "train" or "dev"
    files: int  # output files
    cfg: PipelineConfig
    out: Path
    categories: list[str] | None
    keep_prompt_only: bool
    pad_id: int

    def plan(self, tokens: Tokenized, warn: Callable[[str], None]) -> tuple[list[FileTask], list[int]]:
        """The write tasks of the split's files and their row counts; ``tokens.metrics`` gets what the rows hold and
        lost; ``warn`` gets the mix's warnings."""
        store, metrics = tokens.store, tokens.metrics
        orders, requested = self._orders(store, warn)
        rows, plan = self._pack(store, metrics, orders)
        cat_ids = category_table(store, self.categories)
        truncated = lost_articles(store, metrics)
        copies, kept = metrics.per_article["copies"], metrics.per_article["kept"]
        metrics.mix = realized(store, metrics.trained, copies, kept, requested)
        max_len, n = self.cfg.max_seq_length, len(rows)
        tasks = [
            file_task(
                self.out / f"{self.split}_{j + 1}_of_{n}.hdf5",
                store,
                plan.select(r),
                max_len,
                self.pad_id,
                cat_ids,
                truncated,
            )
            for j, r in enumerate(rows)
        ]
        return tasks, [len(r) for r in rows]

    def _orders(self, store: TokenStore, warn) -> tuple[list[np.ndarray], dict | None]:
        """Per output file, the articles it packs (store indices), and the mix's requested shares (None: no mix).

        With ``--mix`` (train only): the mixed articles, in a seeded order, cut into near-equal files; else each
        file's own articles (lines were tagged with their file)."""
        cfg = self.cfg
        if self.split == "train" and cfg.mix:
            sup = trainable_supervised(store, cfg.max_seq_length, cfg.input_packing_config)
            order, requested, warnings = select(store, cfg.mix, sup, cfg.seed)
            for w in warnings:
                warn(w)
            return [order[lo:hi] for lo, hi in chunks(len(order), self.files)], requested
        tags = np.frombuffer(store.tags, dtype=np.int32)
        cuts = np.searchsorted(tags, np.arange(self.files + 1), side="left")
        return [np.arange(cuts[j], cuts[j + 1], dtype=np.int32) for j in range(self.files)], None

    def _pack(self, store: TokenStore, metrics: SplitMetrics, orders: list[np.ndarray]) -> tuple[list[list], Plan]:
        """The split's packing plan and, per output file, its rows in the plan (balanced unless
        ``--do_not_balance_hdf5``); refuses a split without completion tokens or with an empty file."""
        cfg, pconf = self.cfg, self.cfg.input_packing_config
        keep_prompt_only = self.keep_prompt_only
        rows, plan = [], Plan()
        if pconf.style == "bfd":  # ours: best fit over the whole split, in a seeded order, cut into files
            plan = pack_store(store, cfg.max_seq_length, pconf, keep_prompt_only, metrics, np.concatenate(orders))
            plan = plan.select(np.random.default_rng(cfg.seed + 1).permutation(len(plan)))
            rows = [list(range(lo, hi)) for lo, hi in chunks(len(plan), len(orders))]
        else:  # gdp: each file packed on its own
            for order in orders:
                seqs = pack_store(store, cfg.max_seq_length, pconf, keep_prompt_only, metrics, order)
                rows.append(list(range(len(plan), len(plan) + len(seqs))))
                plan.extend(seqs)
        record_sequences(store, plan, cfg.max_seq_length, metrics)
        if plan and metrics.tokens["completion"] == 0:
            raise DataError(
                f"{self.split} split has no completion tokens: nothing would be trained; check "
                "--prompt_keyword/--completion_keyword or the packing settings"
            )
        if not cfg.do_not_balance_hdf5:
            rows = balance(rows)
        empty = [j + 1 for j, r in enumerate(rows) if not r]
        if empty:
            flag = "training" if self.split == "train" else self.split
            raise DataError(
                f"{self.split} file {empty[0]} of {len(rows)} would hold no sequences ({len(plan)} in all); "
                f"lower --num_{flag}_splits"
            )
        return rows, plan

"""One split of a pipeline run (train or dev) as a job: its files' lines tokenized in one pass, mixed (``--mix``,
train only), packed, balanced into near-equal files and written as ``{split}_{i}_of_{N}.hdf5``.

Each output file's lines are tokenized and packed on their own, as gdp does (``bfd`` packs the whole split, then
cuts it into files). Tokens wait in an on-disk ``TokenStore`` until the files are written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from common.errors import DataError
from tokenization_prep.articles import ArticleTokenizer
from tokenization_prep.hdf5_io import TokenStore, write_hdf5
from tokenization_prep.inputs import LineIndex
from tokenization_prep.mixing import realized, select, trainable_supervised
from tokenization_prep.packing import Plan
from tokenization_prep.settings import ArticleSettings, PipelineConfig
from tokenization_prep.splits import balance, chunks
from tokenization_prep.tokenize_split import (
    SplitMetrics,
    category_table,
    lost_articles,
    pack_store,
    record_sequences,
    tokenize_into,
)
from tokenization_prep.tokenizer_io import pad_id


@dataclass(frozen=True)
class SplitJob:
    """Everything one split needs; ``run`` does the work and returns the split's metrics and rows per file."""

    split: str  # "train" or "dev"
    parts: list[np.ndarray]  # per output file: positions into the line index (splits.assign_lines)
    lines: LineIndex
    tokenizer: object
    article: ArticleSettings  # the run's: the settings' own, with is_text and chat_render set from the input
    cfg: PipelineConfig
    out: Path
    categories: list[str] | None

    def run(self, skipped: list[bytes], warn: Callable[[str], None]) -> tuple[SplitMetrics, list[int]]:
        """Tokenize, pack and write the split; bad lines skipped under ``--ignore_input_format_error`` are appended
        to ``skipped``, and ``warn`` gets the mix's warnings."""
        metrics, store = SplitMetrics(), TokenStore(self.out, self.split)
        try:
            self._tokenize(store, metrics, skipped)
            orders, requested = self._orders(store, warn)
            rows, plan = self._pack(store, metrics, orders)
            cat_ids = category_table(store, self.categories)
            truncated = lost_articles(store, metrics)
            copies, kept = metrics.per_article["copies"], metrics.per_article["kept"]
            metrics.mix = realized(store, metrics.trained, copies, kept, requested)
            max_len = self.cfg.max_seq_length
            for j, r in enumerate(rows):
                name = f"{self.split}_{j + 1}_of_{len(rows)}.hdf5"
                write_hdf5(self.out / name, store, plan.select(r), max_len, pad_id(self.tokenizer), cat_ids, truncated)
            return metrics, [len(r) for r in rows]
        finally:
            store.cleanup()

    def _tokenize(self, store: TokenStore, metrics: SplitMetrics, skipped: list[bytes]) -> None:
        """Every file's lines in turn, tagged with their file: one pipelined tokenizer pass for the split."""

        def tagged():
            for j, part in enumerate(self.parts):
                for file, lineno, raw in self.lines.read(part):
                    yield file, lineno, raw, j

        tokenize_into(
            tagged(),
            ArticleTokenizer(self.tokenizer, self.article),
            store,
            metrics,
            self.cfg.ignore_input_format_error,
            skipped,
            total=sum(len(p) for p in self.parts),
            desc=f"tokenizing {self.split}",
        )

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
            return [order[lo:hi] for lo, hi in chunks(len(order), len(self.parts))], requested
        tags = np.frombuffer(store.tags, dtype=np.int32)
        cuts = np.searchsorted(tags, np.arange(len(self.parts) + 1), side="left")
        return [np.arange(cuts[j], cuts[j + 1], dtype=np.int32) for j in range(len(self.parts))], None

    def _pack(self, store: TokenStore, metrics: SplitMetrics, orders: list[np.ndarray]) -> tuple[list[list], Plan]:
        """The split's packing plan and, per output file, its rows in the plan (balanced unless
        ``--do_not_balance_hdf5``); refuses a split without completion tokens or with an empty file."""
        cfg, pconf = self.cfg, self.cfg.input_packing_config
        keep_prompt_only = self.article.keep_prompt_only_sequences
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

"""The steps of tokenizing one split, shared by the pipeline's split jobs and gdp's one-file ``data_prep``: lines ->
articles in a TokenStore (``tokenize_into``) -> packing plan (``pack_store``) -> what the rows hold and lost
(``SplitMetrics``, ``record_sequences``, ``lost_articles``).

Bad lines stop the run with file, line and fix, or with ``--ignore_input_format_error`` go to a skipped-lines log
and are counted.
"""

from __future__ import annotations

import sys
from array import array
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
import orjson
from tqdm import tqdm

from common.errors import DataError
from tokenization_prep.articles import ArticleTokenizer, InputFormatError, LineParts, parse_line
from tokenization_prep.hdf5_io import TokenStore, has_completion
from tokenization_prep.packing import PackingConfig, Plan, plan
from tokenization_prep.schema import COMPLETION, PROMPT, SEP

BATCH_LINES = 1024
TYPE_NAMES = {PROMPT: "prompt", COMPLETION: "completion", SEP: "end_of_article"}


@dataclass
class SplitMetrics:
    """What one split holds and what was dropped, for the data report and the mask audit."""

    lines: int = 0
    skipped_lines: int = 0
    articles: int = 0
    sequences: int = 0
    tokens: Counter = field(default_factory=Counter)  # by type name, after packing (padding included)
    dropped: Counter = field(default_factory=Counter)  # tokens dropped, by reason
    by_source: dict = field(default_factory=lambda: defaultdict(Counter))  # source -> type -> tokens (input)
    article_lengths: array = field(default_factory=lambda: array("i"))
    fill: array = field(default_factory=lambda: array("f"))  # non-padding fraction per sequence
    prompt_only_sequences: int = 0  # packed sequences dropped for having no completion token
    # per store article: copies packed, tokens after overflow handling, tokens in written rows
    per_article: dict = field(default_factory=dict)
    lost: list = field(default_factory=list)  # dropped and truncated articles (lost_articles)
    trained: Counter = field(default_factory=Counter)  # source code -> supervised tokens in the written rows
    mix: dict | None = None  # source -> requested/realized/supervised_tokens/articles/repeats (mixing.realized)

    def count_articles(self, n: int, order: np.ndarray | None, seqs: Plan, stage: str) -> None:
        """Add the copies of ``order`` and the tokens ``seqs`` holds per article to the per-article counts."""
        for key in ("copies", "packed", "kept"):
            self.per_article.setdefault(key, np.zeros(n, dtype=np.int32))
        if order is not None:
            np.add.at(self.per_article["copies"], order, 1)
        art = np.frombuffer(seqs.art, dtype=np.int32)
        took = np.frombuffer(seqs.end, dtype=np.int32) - np.frombuffer(seqs.start, dtype=np.int32)
        np.add.at(self.per_article[stage], art, took)

    def gdp_metrics(self, max_len: int) -> dict:
        """gdp's per-split metrics under its names (``Metrics``), with its meanings: ``articles`` counts lines
        read, ``completion_tokens`` includes end-of-article tokens, the all-prompt drop counts whole rows."""
        packing = sum(n for r, n in self.dropped.items() if r.startswith("longer than max_seq_length"))
        return {
            "input_tokens": int(np.frombuffer(self.article_lengths, dtype=np.int32).sum()),
            "output_tokens": self.sequences * max_len,
            "prompt_tokens": self.tokens["prompt"],
            "completion_tokens": self.tokens["completion"] + self.tokens["end_of_article"],
            "padding_tokens": self.tokens["padding"],
            "sequences": self.sequences,
            "articles": self.lines,
            "tokens_dropped_from_packing": packing,
            "tokens_dropped_from_all_prompt": self.prompt_only_sequences * max_len,
        }

    def as_dict(self) -> dict:
        return {
            "lines": self.lines,
            "skipped_lines": self.skipped_lines,
            "articles": self.articles,
            "sequences": self.sequences,
            "tokens": dict(self.tokens),
            "tokens_dropped": dict(self.dropped),
            "tokens_by_source": {k: dict(v) for k, v in sorted(self.by_source.items())},
            "lost_articles": self.lost,
            "mix": self.mix,
        }


def _parsed_batches(lines, settings, metrics, ignore_errors, skipped_log) -> Iterator[list[LineParts]]:
    """Parse lines into batches of BATCH_LINES; bad lines raise, or are logged and counted."""
    batch: list[LineParts] = []
    for file, lineno, raw, *tag in lines:  # an optional tag: the output file the line goes to
        metrics.lines += 1
        try:
            parts = parse_line(raw, settings)
            parts.tag, parts.file, parts.line = (tag[0] if tag else 0), file, lineno
        except InputFormatError as exc:
            if not ignore_errors:
                raise DataError(
                    f"{file}:{lineno}: {exc} (fix the line, or pass --ignore_input_format_error "
                    "to skip and log such lines)"
                ) from None
            metrics.skipped_lines += 1
            skipped_log.append(orjson.dumps({"file": file, "line": lineno, "reason": str(exc)}))
            continue
        if parts.skipped_empty_completions:
            metrics.dropped["empty completion (pair skipped)"] += parts.skipped_empty_completions
        batch.append(parts)
        if len(batch) >= BATCH_LINES:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_into(
    lines: Iterable[tuple[str, int, bytes]],
    atok: ArticleTokenizer,
    store: TokenStore,
    metrics: SplitMetrics,
    ignore_errors: bool,
    skipped_log: list[bytes],
    total: int | None = None,
    desc: str = "tokenizing",
) -> None:
    """Parse, encode and store every line's articles, in order.

    Pipelined: while the Rust tokenizer encodes batch k on a worker thread (GIL released), this thread
    parses batch k+1 and stores batch k-1, so both cores stay busy. Order, hence output, is unchanged.
    """

    def store_batch(parts_list, encoded):
        for parts, articles in zip(parts_list, atok.assemble(parts_list, encoded)):
            for art in articles:
                counts = store.add(art, parts.tag)
                metrics.articles += 1
                metrics.article_lengths.append(len(art.ids))
                src = metrics.by_source[art.source or "-"]
                for t, name in TYPE_NAMES.items():
                    src[name] += int(counts[t])

    bar = tqdm(total=total, desc=desc, unit="line", mininterval=1.0, file=sys.stderr, disable=None)  # off without a tty
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = None
        for batch in _parsed_batches(lines, atok.settings, metrics, ignore_errors, skipped_log):
            future = pool.submit(atok.encode, batch)
            if pending is not None:
                store_batch(pending[0], pending[1].result())
                bar.update(len(pending[0]))
            pending = (batch, future)
        if pending is not None:
            store_batch(pending[0], pending[1].result())
            bar.update(len(pending[0]))
    bar.close()
    store.seal()


def pack_store(
    store: TokenStore,
    max_len: int,
    config: PackingConfig,
    keep_prompt_only: bool,
    metrics: SplitMetrics,
    order: np.ndarray | None = None,
) -> Plan:
    """Plan sequences of the articles ``order`` (store indices, repeats allowed; default all, in store order), drop
    completion-less ones unless kept, and count dropped tokens, in all and per article."""
    order = np.arange(len(store), dtype=np.int32) if order is None else np.asarray(order, dtype=np.int32)
    lengths = np.frombuffer(store.lengths, dtype=np.int32)[order]
    seqs = plan(lengths.tolist(), max_len, config)
    seqs.art = array("i", order[np.frombuffer(seqs.art, dtype=np.int32)].tobytes())
    metrics.count_articles(len(store), order, seqs, "packed")
    kept = np.frombuffer(seqs.end, dtype=np.int32).sum() - np.frombuffer(seqs.start, dtype=np.int32).sum()
    lost = int(lengths.sum() - kept)
    if config.overflow and lost:
        reason = (
            "longer than max_seq_length (dropped)"
            if config.overflow == "drop"
            else f"longer than max_seq_length ({config.overflow})"
        )
        metrics.dropped[reason] += lost
    if not keep_prompt_only:
        keep = []
        for k, seq in enumerate(seqs):
            if has_completion(store, seq):
                keep.append(k)
            else:
                metrics.dropped["sequence without completion tokens"] += sum(e - s for _, s, e in seq)
                metrics.prompt_only_sequences += 1
        if len(keep) < len(seqs):
            seqs = seqs.select(keep)
    metrics.count_articles(len(store), None, seqs, "kept")
    return seqs


def lost_articles(store: TokenStore, metrics: SplitMetrics) -> np.ndarray:
    """Fill ``metrics.lost`` with every article that lost tokens (origin, reason, tokens kept), and return the
    per-article truncated flags for the provenance. An article left out by ``--mix`` is not lost."""
    pa = metrics.per_article
    lengths = np.frombuffer(store.lengths, dtype=np.int32)
    expected = pa["copies"] * lengths
    truncated = pa["kept"] < expected
    files, sources, cats = (store.names(t) for t in (store.file_names, store.source_names, store.category_names))
    for a in np.flatnonzero(truncated).tolist():
        copies = int(pa["copies"][a])
        reasons = (["longer than max_seq_length"] if pa["packed"][a] < expected[a] else []) + (
            ["in a row without completion tokens"] if pa["kept"][a] < pa["packed"][a] else []
        )
        metrics.lost.append(
            {
                "status": "dropped" if pa["kept"][a] == 0 else "truncated",
                "reason": " + ".join(reasons),
                "file": files[store.files[a]] if store.files[a] >= 0 else None,
                "line": store.lines[a],
                "id": store.record_id(a),
                "source": sources[store.sources[a]] if store.sources[a] >= 0 else None,
                "category": cats[store.categories[a]] if store.categories[a] >= 0 else None,
                "tokens": int(lengths[a]),
                "copies": copies,
                "tokens_kept": int(pa["kept"][a]) // copies,
            }
        )
    metrics.lost.sort(key=lambda r: (r["file"] or "", r["line"]))
    return truncated


def record_sequences(store: TokenStore, seqs, max_len: int, metrics: SplitMetrics) -> None:
    metrics.sequences += len(seqs)
    for seq in seqs:
        used = sum(e - s for _, s, e in seq)
        metrics.fill.append(used / max_len)
        metrics.tokens["padding"] += max_len - used
        for a, s, e in seq:
            counts = store.range_counts(a, s, e)
            for t, name in TYPE_NAMES.items():
                metrics.tokens[name] += int(counts[t])
            metrics.trained[store.sources[a]] += int(counts[COMPLETION] + counts[SEP])


def category_table(store: TokenStore, categories: list[str] | None) -> dict[int, int] | None:
    """Store category code -> category id from ``--categories_path`` (None when not given)."""
    if categories is None:
        return None
    index = {name: i for i, name in enumerate(categories)}
    missing = sorted(set(store.category_names) - set(index))
    if missing:
        raise DataError(f"categories {', '.join(missing)} are in the data but not in --categories_path; add them")
    return {code: index[name] for name, code in store.category_names.items()}

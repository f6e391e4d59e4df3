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

    def merge(self, other: "SplitMetrics") -> None:
        """Add a shard's counts from tokenizing (shards merged in order count what one pass over their lines would)."""
        self.lines += other.lines
        self.skipped_lines += other.skipped_lines
        self.articles += other.articles
        self.dropped.update(other.dropped)
        for source, counts in other.by_source.items():
            self.by_source[source].update(counts)
        self.article_lengths.extend(other.article_lengths)

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


@dataclass
class BadLines:
    """Malformed lines seen while tokenizing: how many, and the first in file order (``order``: file -> its place
    among the inputs). The run stops once the lines are all read, naming that line and the count."""

    order: dict[str, int] = field(default_factory=dict)
    count: int = 0
    first: tuple[int, int, str, str] | None = None  # (file place, line, file, why)

    def add(self, file: str, line: int, why: str) -> None:
        self.count += 1
        key = (self.order.get(file, 0), line, file, why)
        if self.first is None or key[:2] < self.first[:2]:
            self.first = key

    def merge(self, other: "BadLines") -> None:
        if other.first is not None:
            _, line, file, why = other.first
            self.add(file, line, why)
            self.count += other.count - 1

    def error(self) -> DataError:
        _, line, file, why = self.first
        more = f"; {self.count:,} malformed lines in all, this the first in file order" if self.count > 1 else ""
        return DataError(
            f"{file}:{line}: {why}{more} (fix the line{'s' if more else ''}, or pass --ignore_input_format_error to "
            "skip and log such lines)"
        )


def _parsed_batches(lines, settings, metrics, ignore_errors, skipped_log, bad) -> Iterator[list[LineParts]]:
    """Parse lines into batches of BATCH_LINES; bad lines are logged and counted (``ignore_errors``), else collected
    in ``bad``: from the first one on, lines are only parsed (to find and count the others), not returned."""
    batch: list[LineParts] = []
    for file, lineno, raw, *tag in lines:  # an optional tag: the output file the line goes to
        metrics.lines += 1
        try:
            parts = parse_line(raw, settings)
            parts.tag, parts.file, parts.line = (tag[0] if tag else 0), file, lineno
        except InputFormatError as exc:
            if not ignore_errors:
                bad.add(file, lineno, str(exc))
                continue
            metrics.skipped_lines += 1
            skipped_log.append(orjson.dumps({"file": file, "line": lineno, "reason": str(exc)}))
            continue
        if bad.count:
            continue
        if parts.skipped_empty_completions:
            metrics.dropped["empty completion (pair skipped)"] += parts.skipped_empty_completions
        batch.append(parts)
        if len(batch) >= BATCH_LINES:
            yield batch
            batch = []
    if batch and not bad.count:
        yield batch


def tokenize_into(
    lines: Iterable[tuple[str, int, bytes]],
    atok: ArticleTokenizer,
    store: TokenStore,
    metrics: SplitMetrics,
    ignore_errors: bool,
    skipped_log: list[bytes],
    total: int | None = None,
    desc: str | None = "tokenizing",
    bad: BadLines | None = None,
    pipelined: bool = True,
) -> BadLines:
    """Parse, encode and store every line's articles, in order; return the malformed lines (``bad``, or a new
    collector; the caller raises its ``error()``).

    Pipelined: while the Rust tokenizer encodes batch k on a worker thread (GIL released), this thread parses batch
    k+1 and stores batch k-1, so two cores stay busy; without, one core does it all (a worker process of a
    ``--num_workers`` run). Order, hence output, is the same.
    """
    bad = bad if bad is not None else BadLines()

    def store_batch(parts_list, encoded):
        for parts, articles in zip(parts_list, atok.assemble(parts_list, encoded)):
            for art in articles:
                counts = store.add(art, parts.tag)
                metrics.articles += 1
                metrics.article_lengths.append(len(art.ids))
                src = metrics.by_source[art.source or "-"]
                for t, name in TYPE_NAMES.items():
                    src[name] += int(counts[t])

    # off without a tty, and in a worker (desc None: the run shows one bar for all of them)
    bar = tqdm(total=total, desc=desc, unit="line", mininterval=1.0, file=sys.stderr, disable=None if desc else True)
    batches = _parsed_batches(lines, atok.settings, metrics, ignore_errors, skipped_log, bad)
    if not pipelined:
        for batch in batches:
            store_batch(batch, atok.encode(batch))
            bar.update(len(batch))
    else:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for batch in batches:
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
    return bad


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


def record_sequences(store: TokenStore, seqs: Plan, max_len: int, metrics: SplitMetrics) -> None:
    """Count what the rows ``seqs`` hold: fill per row, padding, tokens per type, supervised tokens per source.

    A whole article's counts are its stored ones (numpy, no disk read); only the pieces of cut articles are read."""
    metrics.sequences += len(seqs)
    if not len(seqs):
        return
    art = np.frombuffer(seqs.art, dtype=np.int32)
    start, end = np.frombuffer(seqs.start, dtype=np.int32), np.frombuffer(seqs.end, dtype=np.int32)
    row = np.repeat(np.arange(len(seqs)), np.diff(np.frombuffer(seqs.bounds, dtype=np.int64)))
    used = np.bincount(row, weights=end - start, minlength=len(seqs)).astype(np.int64)
    metrics.fill.extend((used / max_len).astype(np.float32).tolist())
    metrics.tokens["padding"] += int(len(seqs) * max_len - used.sum())
    counts = np.frombuffer(store.type_counts, dtype=np.int32).reshape(-1, 4)[art].astype(np.int64)
    for k in np.flatnonzero((start != 0) | (end != np.frombuffer(store.lengths, dtype=np.int32)[art])).tolist():
        counts[k] = store.range_counts(int(art[k]), int(start[k]), int(end[k]))
    total = counts.sum(axis=0)
    for t, name in TYPE_NAMES.items():
        metrics.tokens[name] += int(total[t])
    supervised = counts[:, COMPLETION] + counts[:, SEP]
    sources = np.frombuffer(store.sources, dtype=np.int32)[art]
    for code in np.unique(sources).tolist():
        metrics.trained[code] += int(supervised[sources == code].sum())


def category_table(store: TokenStore, categories: list[str] | None) -> dict[int, int] | None:
    """Store category code -> category id from ``--categories_path`` (None when not given)."""
    if categories is None:
        return None
    index = {name: i for i, name in enumerate(categories)}
    missing = sorted(set(store.category_names) - set(index))
    if missing:
        raise DataError(f"categories {', '.join(missing)} are in the data but not in --categories_path; add them")
    return {code: index[name] for name, code in store.category_names.items()}

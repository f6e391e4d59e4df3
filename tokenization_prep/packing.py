"""Packing articles into fixed-length sequences, planned from article lengths alone.

A plan is a list of sequences; each sequence is a list of ``(article, start, end)`` token ranges, so
overflow handling (drop, truncate_left, truncate_right) and splitting (``full``) are just ranges,
and the tokens stay on disk until the sequence is written. Styles (gdp's, plus ``bfd``):

- ``full``: concatenate everything and cut every ``max_seq_length`` tokens (articles may split);
- ``greedy::O``: add articles in order while they fit, else start a new sequence;
- ``single::O``: one article per sequence;
- ``bfd::O``: best-fit-decreasing over the whole split: longest first, each into the fullest
  sequence that still has room (ties: the earliest), deterministic.

Example, max_seq_length 4, lengths [3, 2, 2, 1]: greedy -> [0], [1, 2], [3]; bfd -> [0, 3], [1, 2].
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from common.errors import ConfigError

OVERFLOWS = ("drop", "truncate_left", "truncate_right")
STYLES = ("full", "greedy", "single", "bfd")

Range = tuple[int, int, int]  # (article index, start, end) within the article's tokens


class Plan:
    """Sequences as flat arrays of ranges (12 bytes a range, 8 a sequence) instead of lists of tuples.

    Indexing gives one sequence as a list of ``(article, start, end)``; ``select`` keeps or reorders.
    """

    def __init__(self):
        self.art, self.start, self.end = array("i"), array("i"), array("i")
        self.bounds = array("q", [0])

    def add(self, ranges: Iterable[Range]) -> None:
        for a, s, e in ranges:
            self.art.append(a)
            self.start.append(s)
            self.end.append(e)
        self.bounds.append(len(self.art))

    def __len__(self) -> int:
        return len(self.bounds) - 1

    def __getitem__(self, k: int) -> list[Range]:
        k = k + len(self) if k < 0 else k
        lo, hi = self.bounds[k], self.bounds[k + 1]
        return list(zip(self.art[lo:hi], self.start[lo:hi], self.end[lo:hi]))

    def __iter__(self) -> Iterator[list[Range]]:
        return (self[k] for k in range(len(self)))

    def __eq__(self, other) -> bool:
        return list(self) == list(other)

    def extend(self, other: "Plan") -> None:
        """Append every sequence of ``other``."""
        base = len(self.art)
        self.art.extend(other.art)
        self.start.extend(other.start)
        self.end.extend(other.end)
        self.bounds.extend(b + base for b in other.bounds[1:])

    def select(self, indices: Iterable[int]) -> "Plan":
        """The sequences ``indices``, in that order (repeats allowed), gathered with numpy."""
        idx = np.fromiter(indices, dtype=np.int64)
        bounds = np.frombuffer(self.bounds, dtype=np.int64)
        lo, n = bounds[idx], bounds[idx + 1] - bounds[idx]
        ends = np.cumsum(n)
        pos = np.repeat(lo - ends + n, n) + np.arange(ends[-1] if len(ends) else 0)  # each piece's old place
        out = Plan()
        for name in ("art", "start", "end"):
            setattr(out, name, array("i", np.frombuffer(getattr(self, name), dtype=np.int32)[pos].tobytes()))
        out.bounds = array("q", np.concatenate([[0], ends]).astype(np.int64).tobytes())
        return out


@dataclass(frozen=True)
class PackingConfig:
    style: str
    overflow: str | None = None

    @classmethod
    def parse(cls, text: str) -> "PackingConfig":
        """``full`` or ``STYLE::OVERFLOW``; a bare ``greedy`` (BLOOMChat's scripts) is an error, as in gdp."""
        if text == "full":
            return cls("full")
        style, sep, overflow = text.partition("::")
        if style in STYLES and style != "full" and sep and overflow in OVERFLOWS:
            return cls(style, overflow)
        choices = ["full"] + [f"{s}::{o}" for s in STYLES if s != "full" for o in OVERFLOWS]
        raise ConfigError(f"--input_packing_config {text!r} is not valid; choose one of {', '.join(choices)}")

    def __str__(self) -> str:
        return self.style if self.overflow is None else f"{self.style}::{self.overflow}"


def fit(length: int, room: int, overflow: str) -> tuple[int, int]:
    """The (start, end) range of an article of ``length`` kept in ``room`` tokens; empty when dropped."""
    if length <= room:
        return 0, length
    if overflow == "drop":
        return 0, 0
    if overflow == "truncate_left":
        return length - room, length
    return 0, room


class _CapacityIndex:
    """Open sequences bucketed by free space, with a segment tree to find the smallest free >= need."""

    def __init__(self, max_len: int):
        self.size = 1
        while self.size < max_len + 1:
            self.size *= 2
        self.tree = [0] * (2 * self.size)
        self.buckets: list[list[int]] = [[] for _ in range(max_len + 1)]

    def _update(self, cap: int, delta: int) -> None:
        i = cap + self.size
        while i:
            self.tree[i] += delta
            i //= 2

    def add(self, cap: int, seq: int) -> None:
        self.buckets[cap].append(seq)
        self._update(cap, 1)

    def pop_best(self, need: int) -> tuple[int, int] | None:
        """Remove and return (free, seq) for the smallest free >= need (earliest sequence on ties)."""
        free = self._find(1, 0, self.size - 1, need)
        if free < 0:
            return None
        bucket = self.buckets[free]
        seq = min(bucket)
        bucket.remove(seq)
        self._update(free, -1)
        return free, seq

    def _find(self, node: int, lo: int, hi: int, need: int) -> int:
        """Leftmost non-empty capacity >= need under ``node`` (covering lo..hi), or -1."""
        if hi < need or self.tree[node] == 0:
            return -1
        if lo == hi:
            return lo
        mid = (lo + hi) // 2
        left = self._find(2 * node, lo, mid, need)
        return left if left >= 0 else self._find(2 * node + 1, mid + 1, hi, need)


def plan(lengths, max_len: int, config: PackingConfig) -> Plan:
    """Plan sequences for articles of the given lengths (in their order)."""
    seqs = Plan()
    if config.style == "full":
        cur, free = [], max_len
        for a, n in enumerate(lengths):
            start = 0
            while start < n:
                take = min(free, n - start)
                cur.append((a, start, start + take))
                start += take
                free -= take
                if free == 0:
                    seqs.add(cur)
                    cur, free = [], max_len
        if cur:
            seqs.add(cur)
    elif config.style == "single":
        for a, n in enumerate(lengths):
            s, e = fit(n, max_len, config.overflow)
            if e > s:
                seqs.add([(a, s, e)])
    elif config.style == "greedy":
        cur, used = [], 0
        for a, n in enumerate(lengths):
            if used + n <= max_len:
                if n:
                    cur.append((a, 0, n))
                used += n
                continue
            if cur:
                seqs.add(cur)
            s, e = fit(n, max_len, config.overflow)
            cur, used = ([(a, s, e)] if e > s else []), e - s
        if cur:
            seqs.add(cur)
    else:
        for seq in _bfd(lengths, max_len, config.overflow):
            seqs.add(seq)
    return seqs


def _bfd(lengths: list[int], max_len: int, overflow: str) -> list[list[Range]]:
    order = sorted(range(len(lengths)), key=lambda a: (-min(lengths[a], max_len), a))
    seqs: list[list[Range]] = []
    index = _CapacityIndex(max_len)
    for a in order:
        s, e = fit(lengths[a], max_len, overflow)
        n = e - s
        if n == 0:
            continue
        found = index.pop_best(n)
        if found is None:
            seqs.append([(a, s, e)])
            free, seq = max_len - n, len(seqs) - 1
        else:
            free, seq = found
            seqs[seq].append((a, s, e))
            free -= n
        if free > 0:
            index.add(free, seq)
    return seqs

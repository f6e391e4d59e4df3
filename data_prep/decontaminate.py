"""Decontamination: drop training records that share a long word n-gram with an evaluation prompt.

As GPT-3 and open-instruct do, a record is contaminated when it contains any ``n``-word sequence (default 13) of an
evaluation item. Words are casefolded ``\\w+`` runs, so punctuation, case and spacing do not hide a copy.

Evaluation files, one item a line:

- ``.jsonl`` / ``.json`` (JSON Lines): an object per line; its text is the string values of the keys in
  ``PROMPT_KEYS`` present, in that order, then the ``content`` of every message of an OpenAI ``messages`` list,
  joined (so an n-gram may run from one field into the next, as the record's text does: instruction, then context).
  A line with none of them, or a key holding a non-string, is bad input.
- ``.txt``: each non-blank line is one item.

An item shorter than ``n`` words matches when its whole word sequence appears in a record, if it has at least
``min_words`` (8) words; shorter items would match common phrases, so they are counted as too short and never match
(``too_short``, in ``summary_line()``). ``match`` names the first item in file order that matches.

Speed (benchmarks/bench_data_quality.py, case "decontaminate"): numpy finds the words of a record (a lookup
table of the code points ``\\w`` matches) and hashes every ``min_words``-word window at once (a polynomial over the
words' polynomial hashes, by prefix sums modulo 2**64); one set lookup per record asks whether any window starts an
item's n-gram or is a short item's head; only such a hit (rare) is confirmed word by word, so hashes never decide.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from common.errors import DataError

PROMPT_KEYS = ("prompt", "question", "instruction", "input", "context", "query", "problem", "text")
MIN_WORDS = 8
WORD = re.compile(r"\w+")
_P_CHAR, _P_WORD = 0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F  # odd, so invertible modulo 2**64
_M = 1 << 64


def words(text: str) -> list[str]:
    """Casefolded ``\\w+`` runs: ``words("Don't STOP!") == ['don', 't', 'stop']``."""
    return WORD.findall(text.casefold())


def _powers(p: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """p**i and p**-i modulo 2**64 for i < size (numpy's uint64 products wrap modulo 2**64)."""

    def run(x: int) -> np.ndarray:
        out = np.full(size, x, dtype=np.uint64)
        out[0] = 1
        return np.cumprod(out)

    return run(p), run(pow(p, -1, _M))


@functools.cache
def _word_chars() -> np.ndarray:
    """What ``\\w`` matches (``str.isalnum()`` or ``_``) for every code point: 1.1 MB, built once a process."""
    table = np.fromiter((chr(c).isalnum() for c in range(0x110000)), dtype=bool, count=0x110000)
    table[ord("_")] = True
    return table


class _WindowHasher:
    """Hashes of a text's word windows, all at once in numpy: a word's hash is a polynomial over its code points,
    a window's a polynomial over its words' hashes (modulo 2**64). Equal windows hash equal; a hit is confirmed."""

    def __init__(self):
        self.word_char = _word_chars()
        self.pw_char, self.inv_char = _powers(_P_CHAR, 1024)
        self.pw_word, self.inv_word = _powers(_P_WORD, 256)

    def prefix(self, text: str) -> np.ndarray:
        """Prefix sums of hash(word) * P**i over the casefolded words of ``text`` (length words + 1)."""
        if text.isascii():  # the same code points, a byte each (~1.5x faster)
            chars = np.frombuffer(text.lower().encode(), dtype=np.uint8)
            table = self.word_char[:128]
        else:
            chars = np.frombuffer(text.casefold().encode("utf-32-le"), dtype=np.uint32)
            table = self.word_char
        if len(chars) > len(self.pw_char):
            self.pw_char, self.inv_char = _powers(_P_CHAR, 2 * len(chars))
        is_word = np.zeros(len(chars) + 2, dtype=bool)
        is_word[1:-1] = table[chars]
        edges = np.flatnonzero(is_word[1:] != is_word[:-1])  # word starts and ends, alternating
        starts, ends = edges[::2], edges[1::2]
        acc = np.zeros(len(chars) + 1, dtype=np.uint64)
        np.cumsum(chars * self.pw_char[: len(chars)], out=acc[1:])
        word_hash = (acc[ends] - acc[starts]) * self.inv_char[starts]
        n = len(word_hash)
        if n > len(self.pw_word):
            self.pw_word, self.inv_word = _powers(_P_WORD, 2 * n)
        out = np.zeros(n + 1, dtype=np.uint64)
        np.cumsum(word_hash * self.pw_word[:n], out=out[1:])
        return out

    def windows(self, prefix: np.ndarray, length: int) -> np.ndarray:
        """The hash of each ``length``-word window, independent of where it starts."""
        count = max(len(prefix) - length, 0)
        return (prefix[length:] - prefix[:count]) * self.inv_word[:count]


def _grams(ws: list[str], n: int):
    """The n-word tuples of ``ws``, lazily, built in C."""
    return zip(*(ws[i:] for i in range(n)))


def _contains(table: set[int], keys: np.ndarray) -> bool:
    """Whether any of ``keys`` is in ``table`` (a set lookup beats numpy's searchsorted on ~100 keys)."""
    return not table.isdisjoint(keys.tolist())


def _jsonl_text(obj, where: str) -> str:
    """The prompt text of one JSONL eval item (see the module docstring), or a DataError naming ``where``."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: JSON value is a {type(obj).__name__}, not an object; give one object a line")
    parts = []
    for key in PROMPT_KEYS:
        value = obj.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise DataError(f"{where}: field {key!r} is a {type(value).__name__}, not a string")
        parts.append(value)
    messages = obj.get("messages")
    if messages is not None:
        if not isinstance(messages, list):
            raise DataError(f"{where}: field 'messages' is a {type(messages).__name__}, not a list")
        for i, m in enumerate(messages):
            content = m.get("content") if isinstance(m, dict) else None
            if not isinstance(content, str):
                raise DataError(f"{where}: messages[{i}] has no string 'content'")
            parts.append(content)
    if not parts:
        keys = ", ".join((*PROMPT_KEYS, "messages"))
        raise DataError(f"{where}: no prompt text: give one of the keys {keys}")
    return "\n".join(parts)


def read_eval_items(path: str) -> list[tuple[str, str]]:
    """[(``"file:line"``, text)] of one eval file; DataError (one line, naming file[:line]) if unusable."""
    p = Path(path)
    if p.suffix not in (".jsonl", ".json", ".txt"):
        raise DataError(f"{path}: unknown eval file type; give .jsonl (an object a line) or .txt (an item a line)")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the eval file ({exc.strerror or exc}); check the --decontaminate path")
    try:
        lines = raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 (byte {exc.start}); save the eval file as UTF-8") from None
    items = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        if p.suffix == ".txt":
            items.append((where, line))
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise DataError(f"{where}: not JSON ({str(exc).split(':')[0]}); give one JSON object a line") from None
        items.append((where, _jsonl_text(obj, where)))
    if not items:
        raise DataError(f"{path}: no evaluation items (the file is empty or blank)")
    return items


@dataclass
class Decontaminator:
    """Eval items' n-grams -> the first item (in file order) holding each; ``match(text)`` looks a record up."""

    n: int = 13
    min_words: int = MIN_WORDS
    items: int = 0  # items that can match
    too_short: int = 0  # items with fewer than min(n, min_words) words: never match
    files: list[str] = field(default_factory=list)
    _grams: dict[tuple, str] = field(default_factory=dict, repr=False)  # n-gram -> first item holding it
    _short: dict[tuple, list[tuple[tuple, str]]] = field(default_factory=dict, repr=False)  # head -> [(item, id)]
    _hasher: _WindowHasher = field(default_factory=_WindowHasher, repr=False)
    _heads: set[int] = field(default_factory=set, repr=False)  # hashes of the first min_words words of each n-gram

    @classmethod
    def from_files(cls, paths: list[str], n: int = 13, min_words: int = MIN_WORDS) -> Decontaminator:
        """Load every eval file (all read before any work: a bad one is one DataError line)."""
        if n < 1:
            raise ValueError("n must be >= 1")
        d = cls(n=n, min_words=min(min_words, n), files=list(paths))
        for path in paths:
            for item_id, text in read_eval_items(path):
                d.add(item_id, text)
        return d

    def add(self, item_id: str, text: str) -> None:
        """Index one eval item; earlier items keep the n-grams they share with later ones."""
        ws, prefix = words(text), self._hasher.prefix(text)
        if len(ws) >= self.n:
            for g in _grams(ws, self.n):
                self._grams.setdefault(g, item_id)
            self._heads.update(self._hasher.windows(prefix, self.min_words)[: len(ws) - self.n + 1].tolist())
        elif len(ws) >= self.min_words:
            self._short.setdefault(tuple(ws[: self.min_words]), []).append((tuple(ws), item_id))
            self._heads.add(int(self._hasher.windows(prefix, self.min_words)[0]))
        else:
            self.too_short += 1
            return
        self.items += 1

    def match(self, text: str) -> str | None:
        """The first eval item (file order) sharing an n-gram (or, for a short item, its whole text) with ``text``."""
        prefix = self._hasher.prefix(text)
        if len(prefix) <= self.min_words or not _contains(self._heads, self._hasher.windows(prefix, self.min_words)):
            return None
        ws = words(text)  # a head matched (rare): confirm word by word, as hashes can collide
        hits = [self._grams[g] for g in _grams(ws, self.n) if g in self._grams]
        for i, head in enumerate(_grams(ws, self.min_words)):
            for item, item_id in self._short.get(head, ()):
                if tuple(ws[i : i + len(item)]) == item:
                    hits.append(item_id)
        return min(hits, key=self._order) if hits else None

    def _order(self, item_id: str) -> tuple[int, int]:
        """File order of an item id ``file:line``."""
        file, _, line = item_id.rpartition(":")
        return self.files.index(file), int(line)

    def summary_line(self) -> str:
        """One line for the run summary: what was loaded."""
        return (
            f"decontamination: {self.items:,} eval items from {len(self.files)} file(s), {self.n}-word n-grams; "
            f"{self.too_short:,} items under {self.min_words} words too short to match"
        )

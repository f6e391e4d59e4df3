"""Dev-split leakage: dev (and test) lines that nearly copy a training line inflate the dev numbers, so after the
split assignment each one is moved to train (``--dev_leakage move``, the default) or dropped (``drop``).

A line's text is the strings it tokenizes: every pair's prompt and completion (or the whole line of a .txt input).
Every training line is indexed (``common.near_dup.NearDupIndex``: MinHash LSH, estimated Jaccard >= 0.8 on
5-word shingles), then each dev line, then each test line, is looked up, in split-file order. Rule for a moved
line: it is appended to the training file that holds the line it matched (the first-indexed match), so it is
tokenized and packed with its near-copy. Lines that do not parse or hold no text are left where they are (the
tokenizer reports bad lines as before).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import orjson

from common.errors import DataError
from common.near_dup import NearDupIndex
from tokenization_prep.inputs import LineIndex
from tokenization_prep.settings import ArticleSettings

THRESHOLD, SHINGLE = 0.8, 5  # common.near_dup's defaults, stated here for the report


@dataclass(frozen=True)
class Leak:
    """One dev/test line that nearly copies a training line, and what was done with it."""

    split: str  # "dev" or "test"
    file: str
    line: int
    train_file: str
    train_line: int
    jaccard: float  # estimated (MinHash) Jaccard of the two lines' shingle sets


@dataclass
class Leakage:
    """The check's outcome: its mode, how many lines were indexed and checked, and every leak found."""

    mode: str
    train_lines: int = 0
    checked: dict[str, int] = field(default_factory=dict)
    leaks: list[Leak] = field(default_factory=list)

    def as_dict(self) -> dict:
        """data_report.json's ``leakage`` entry."""
        found = {s: sum(k.split == s for k in self.leaks) for s in self.checked}
        return {
            "mode": self.mode,
            "threshold": THRESHOLD,
            "shingle_words": SHINGLE,
            "train_lines_indexed": self.train_lines,
            "checked": self.checked,
            "moved" if self.mode == "move" else "dropped": found,
            "lines": [asdict(k) for k in self.leaks],
        }

    def summary(self) -> str:
        """One line: what was checked and what was done."""
        done = "moved to train" if self.mode == "move" else "dropped"
        found = ", ".join(f"{sum(k.split == s for k in self.leaks):,} of {n:,} {s}" for s, n in self.checked.items())
        return (
            f"dev leakage ({self.mode}): {found or 'no dev or test'} lines {done} as near-duplicates of "
            f"{self.train_lines:,} train lines (estimated Jaccard >= {THRESHOLD}, {SHINGLE}-word shingles)"
        )

    def log_lines(self) -> list[str]:
        """logs.log: the summary, then each leak with the training line it matched."""
        verb = "moved" if self.mode == "move" else "dropped"
        return [self.summary()] + [
            f"dev leakage: {verb} {k.split} line {k.file}:{k.line} (near-duplicate of train line "
            f"{k.train_file}:{k.train_line}, estimated Jaccard {k.jaccard:.3f})"
            for k in self.leaks
        ]


def line_text(raw: bytes, article: ArticleSettings) -> str:
    """The strings a line tokenizes, joined by newlines: each pair's prompt and completion (the whole line of a
    .txt input). "" for a line that does not parse: the tokenizer reports it."""
    if article.is_text:
        return raw.decode("utf-8", "replace")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ""
    pairs = obj if isinstance(obj, list) else [obj]
    keys = (article.prompt_keyword, article.completion_keyword)
    return "\n".join(p[k] for p in pairs if isinstance(p, dict) for k in keys if isinstance(p.get(k), str))


def remove_leaks(
    lines: LineIndex, parts: list[np.ndarray], names: list[tuple[str, int]], mode: str, article: ArticleSettings
) -> tuple[list[np.ndarray], Leakage]:
    """``parts`` (per split file, as ``splits.assign_lines`` gives them) without the dev and test lines that nearly
    copy a training line: appended to the matched line's training file (``move``) or left out (``drop``)."""
    result = Leakage(mode)
    train = [j for j, (s, _) in enumerate(names) if s == "train"]
    others = [j for s in ("dev", "test") for j, (kind, _) in enumerate(names) if kind == s and len(parts[j])]
    if mode == "off" or not others:
        return parts, result
    index = NearDupIndex(THRESHOLD, shingle=SHINGLE)
    owner = np.full(len(lines.offsets), -1, np.int32)  # position -> the training file holding it
    for j in train:
        owner[parts[j]] = j
        for (file, lineno, raw), pos in zip(lines.read(parts[j]), parts[j]):
            text = line_text(raw, article)
            if text.strip():
                index.add(str(int(pos)), text)
    result.train_lines = len(index)
    parts = list(parts)
    moved: dict[int, list[int]] = {j: [] for j in train}
    for j in others:
        split, keep = names[j][0], np.ones(len(parts[j]), bool)
        for k, (file, lineno, raw) in enumerate(lines.read(parts[j])):
            text = line_text(raw, article)
            found = index.query(text) if text.strip() else None
            if found is None:
                continue
            pos = int(found[0])
            keep[k] = False
            moved[int(owner[pos])].append(int(parts[j][k]))
            ((train_file, train_line, _),) = lines.read([pos])
            result.leaks.append(Leak(split, file, lineno, train_file, train_line, round(found[1], 4)))
        result.checked[split] = result.checked.get(split, 0) + len(parts[j])
        if split == "dev" and not keep.any():
            raise DataError(
                f"--dev_leakage {mode}: every line of dev file {names[j][1]} nearly copies a training line "
                f"({len(keep)} lines, e.g. {result.leaks[-1].file}:{result.leaks[-1].line}), so it would be empty; "
                "deduplicate the input (data_prep), lower --num_dev_splits, or pass --dev_leakage off"
            )
        parts[j] = parts[j][keep]
    if mode == "move":
        for j, extra in moved.items():
            if extra:
                parts[j] = np.concatenate([parts[j], np.asarray(extra, parts[j].dtype)])
    return parts, result

"""Dev-split leakage: dev (and test) lines that nearly copy a training line inflate the dev numbers, so after the
split assignment each one is moved to train (``--dev_leakage move``, the default) or dropped (``drop``).

A line's text is the strings it tokenizes: every pair's prompt and completion (or the whole line of a .txt input).
Every training line is indexed (``common.near_dup.NearDupIndex``: MinHash LSH, estimated Jaccard >= 0.8 on
5-word shingles), then each dev line, then each test line, is looked up, in split-file order; the lines are
sketched in the run's worker processes, the index is built and queried in the main process. Rule for a moved
line: it is appended to the training file that holds the line it matched (the first-indexed match), so it is
tokenized and packed with its near-copy. Lines that do not parse or hold no text are left where they are (the
tokenizer reports bad lines as before).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np
import orjson

from common.errors import DataError
from common.near_dup import NearDupIndex, Sketch
from tokenization_prep.engine import LocalEngine
from tokenization_prep.inputs import LineIndex, read_lines
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


@dataclass
class SketchTask:
    """Lines to sketch, by file, byte offset and line number (a worker reads them itself)."""

    files: list[str]
    file_index: np.ndarray
    offsets: np.ndarray
    line_numbers: np.ndarray
    article: ArticleSettings  # without chat_render (not needed: the text is the pairs' strings)
    cwd: str = field(default_factory=os.getcwd)


_SKETCHER: list[NearDupIndex] = []  # this process's (its permutations are made once)


def sketch_lines(task: SketchTask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lines' MinHash sketches, packed (which lines have text, their signatures, their band keys: three arrays
    pickle far cheaper than a sketch object a line): the costly, parallel half of the check."""
    if not _SKETCHER:
        _SKETCHER.append(NearDupIndex(THRESHOLD, shingle=SHINGLE))
    reads = read_lines(task.files, task.file_index, task.offsets, task.line_numbers, task.cwd)
    texts = [line_text(raw, task.article) for _, _, raw in reads]
    todo = [k for k, text in enumerate(texts) if text.strip()]
    sketches = [
        sk
        for lo in range(0, len(todo), 16)
        for sk in _SKETCHER[0].sketches(  # near_dup's batch size
            [(texts[k], None) for k in todo[lo : lo + 16]]
        )
    ]
    has = np.zeros(len(texts), dtype=bool)
    has[todo] = True
    index = _SKETCHER[0]
    sigs = np.stack([sk.text for sk in sketches]) if sketches else np.zeros((0, index.num_perm), np.uint32)
    bands = np.stack([sk.bands for sk in sketches]) if sketches else np.zeros((0, index.bands), np.uint64)
    return has, sigs, bands


def sketched(engine, lines: LineIndex, positions: np.ndarray, article: ArticleSettings) -> Iterator[Sketch | None]:
    """The sketches of the lines ``positions`` (None: no text), in order, computed by the engine's workers."""
    workers = getattr(engine, "workers", 1)
    size = int(np.clip(-(-len(positions) // (4 * workers)), 256, 4096))
    files, article = [str(p) for p in lines.files], article.model_copy(update={"chat_render": None})
    tasks = (
        SketchTask(
            files,
            *(a[positions[lo : lo + size]] for a in (lines.file_index, lines.offsets, lines.line_numbers)),
            article,
        )
        for lo in range(0, len(positions), size)
    )
    for has, sigs, bands in (engine or LocalEngine(1)).map(sketch_lines, tasks):
        k = 0
        for present in has.tolist():
            yield Sketch(sigs[k], None, bands[k]) if present else None
            k += present


def remove_leaks(
    lines: LineIndex,
    parts: list[np.ndarray],
    names: list[tuple[str, int]],
    mode: str,
    article: ArticleSettings,
    engine=None,
) -> tuple[list[np.ndarray], Leakage]:
    """``parts`` (per split file, as ``splits.assign_lines`` gives them) without the dev and test lines that nearly
    copy a training line: appended to the matched line's training file (``move``) or left out (``drop``). The lines
    are sketched by ``engine``'s workers; the index is built and queried here, in order, so the result is the same
    for any number of workers."""
    result = Leakage(mode)
    train = [j for j, (s, _) in enumerate(names) if s == "train"]
    others = [j for s in ("dev", "test") for j, (kind, _) in enumerate(names) if kind == s and len(parts[j])]
    if mode == "off" or not others:
        return parts, result
    index = NearDupIndex(THRESHOLD, shingle=SHINGLE)
    owner = np.full(len(lines.offsets), -1, np.int32)  # position -> the training file holding it
    sketches = sketched(engine, lines, np.concatenate([parts[j] for j in train + others]), article)
    for j in train:
        owner[parts[j]] = j
        for pos, sk in zip(parts[j].tolist(), sketches):
            if sk is not None:
                index.add_sketch(str(pos), sk)
    result.train_lines = len(index)
    parts = list(parts)
    moved: dict[int, list[int]] = {j: [] for j in train}
    where = lambda pos: (str(lines.files[lines.file_index[pos]]), int(lines.line_numbers[pos]))  # noqa: E731
    for j in others:
        split, keep = names[j][0], np.ones(len(parts[j]), bool)
        for k, (pos, sk) in enumerate(zip(parts[j].tolist(), sketches)):
            found = index.query_sketch(sk) if sk is not None else None
            if found is None:
                continue
            train_pos = int(found[0])
            keep[k] = False
            moved[int(owner[train_pos])].append(pos)
            result.leaks.append(Leak(split, *where(pos), *where(train_pos), round(found[1], 4)))
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

"""The run's inputs: which files are read, every non-blank line indexed by byte offset, and the files a setting
names (``--categories_path``, ``--log_file_path``), all checked before any work.

Memory stays flat whatever the input size: the index holds 28 bytes a line, not the text, and a split reads its
lines back by seeking to their offsets (the shuffle permutes offsets, so inputs larger than memory shuffle out of
core).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson

from common.errors import DataError
from common.files import atomic_write, clean_line


def input_files(spec: str) -> list[Path]:
    """The input file, or a directory's .jsonl files (its .txt files if it has none), sorted by name."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in (".jsonl", ".txt"):
            raise DataError(f"--input_path {spec}: not a .jsonl or .txt file (gdp reads only those)")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".jsonl")
        files = files or sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".txt")
        if files:
            return files
        raise DataError(f"--input_path {spec}: directory holds no .jsonl or .txt files")
    raise DataError(f"--input_path {spec}: no such file or directory")


class LineIndex:
    """Every non-blank line of the input files: (file index, byte offset, line number), and its number among all
    lines (blank ones too, files in order: what gdp's round-robin split counts). ``total``: all lines."""

    def __init__(self, files: list[Path]):
        self.files = files
        fidx, offs, nums, glob = [], [], [], []
        k = 0
        for i, path in enumerate(files):
            starts, blank = line_starts(path)
            keep = np.flatnonzero(~blank)
            fidx.append(np.full(len(keep), i, np.int32))
            offs.append(starts[keep])
            nums.append(keep + 1)
            glob.append(keep + k)
            k += len(starts)
        join = lambda parts, dtype: np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # noqa: E731
        self.file_index = join(fidx, np.int32)
        self.offsets = join(offs, np.int64)
        self.line_numbers = join(nums, np.int64)
        self.global_numbers = join(glob, np.int64)
        self.total = k

    @property
    def is_text(self) -> bool:
        """Plain text input (gdp: each line is the completion)."""
        return self.files[0].suffix == ".txt"

    def read(self, positions) -> Iterator[tuple[str, int, bytes]]:
        """(file, line number, line without its end of line) of the indexed lines ``positions``, in that order."""
        positions = np.asarray(positions, dtype=np.int64)
        yield from read_lines(
            [str(p) for p in self.files],
            self.file_index[positions],
            self.offsets[positions],
            self.line_numbers[positions],
        )

    def write(self, path: Path, positions) -> None:
        """The lines ``positions`` to ``path``, one a line (gdp's test and split line files)."""
        with atomic_write(path) as fh:
            for _, _, raw in self.read(positions):
                fh.write(raw + b"\n")


_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True  # what bytes.strip() strips
BLOCK = 1 << 22


def line_starts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Every line's byte offset in one file, and whether it is blank (only whitespace, after a BOM at the start):
    what splitting on newlines and ``strip()`` say, found with numpy in 4 MiB blocks. Only the rare line that starts
    with whitespace is read again, to look past it."""
    starts, firsts = [np.zeros(1, np.int64)], []  # firsts: each start's first byte, once its block is read
    size, pending = 0, 1  # pending: starts whose first byte is in the next block (0 or 1)
    with open(path, "rb") as fh:
        while True:
            block = np.fromfile(fh, dtype=np.uint8, count=BLOCK)
            if not len(block):
                break
            firsts.append(block[:pending])
            newline = np.flatnonzero(block == 10)
            inside = newline[newline + 1 < len(block)] + 1
            starts.append(inside + size)
            firsts.append(block[inside])
            pending = int(len(newline) > 0 and newline[-1] == len(block) - 1)
            if pending:
                starts.append(np.array([size + len(block)], np.int64))
            size += len(block)
        starts = np.concatenate(starts)
        if starts[-1] == size:  # the file ends with a newline (or is empty): no line starts there
            starts = starts[:-1]
        first = np.concatenate(firsts)[: len(starts)] if firsts else np.zeros(0, np.uint8)
        blank = np.zeros(len(starts), dtype=bool)
        for k in np.flatnonzero(_WHITESPACE[first] | (first == 0xEF)).tolist():  # may be blank: look at the line
            fh.seek(int(starts[k]))
            blank[k] = not clean_line(fh.readline(), k == 0).strip()
    return starts, blank


def read_lines(files: list[str], file_index, offsets, line_numbers, cwd: str = "") -> Iterator[tuple[str, int, bytes]]:
    """(file, line number, line without its end of line) of lines given by file, byte offset and number (``cwd``: what
    relative file names are relative to, for a worker elsewhere)."""
    handles: dict[int, object] = {}
    try:
        for i, off, num in zip(file_index.tolist(), offsets.tolist(), line_numbers.tolist()):
            fh = handles.get(i) or handles.setdefault(i, open(os.path.join(cwd, files[i]), "rb"))
            fh.seek(off)
            yield files[i], num, clean_line(fh.readline(), off == 0)
    finally:
        for fh in handles.values():
            fh.close()


def file_lines(path: Path) -> Iterator[tuple[str, int, bytes]]:
    """(file, line number, line) for every non-blank line of one file, in file order (gdp's ``data_prep``)."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            raw = clean_line(raw, lineno == 1)
            if raw.strip():
                yield str(path), lineno, raw


def check_log_path(spec: str | None) -> Path | None:
    """``--log_file_path`` checked before any work: a file (new or old) in an existing directory."""
    if not spec:
        return None
    path = Path(spec)
    if path.is_dir() or not path.parent.is_dir():
        raise DataError(f"--log_file_path {spec}: not a file in an existing directory")
    return path


def read_categories(spec: str | None) -> list[str] | None:
    """``--categories_path``: a JSON list of category names (None when not given)."""
    if not spec:
        return None
    try:
        categories = orjson.loads(Path(spec).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise DataError(f"--categories_path {spec}: cannot read a JSON list ({exc})") from None
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise DataError(f"--categories_path {spec}: must hold a JSON list of category names")
    return categories

"""The on-disk token store (articles waiting to be packed) and the HDF5 split files it becomes.

Tokens of a split go to two flat temp files (int32 ids, int8 types) so memory stays flat whatever
the input size; a packing plan (token ranges) is then materialized block by block into HDF5
datasets ``input_ids`` / ``token_type_ids`` (and ``category_ids``), int32, shape (sequences, L).
Beside them, the group ``provenance`` says where every piece of every row came from
(``tokenization_prep/provenance.py``); gdp's readers never look at it.
"""

from __future__ import annotations

import os
from array import array
from pathlib import Path

import numpy as np

from tokenization_prep.articles import Article
from tokenization_prep.provenance import write_provenance
from tokenization_prep.schema import COMPLETION, PADDING, SEP

BLOCK_ROWS = 64


class TokenStore:
    """Append-only article store on disk with per-article offset, length, category and source codes, and the
    provenance of each article (input file code, line, record id: ids go to a third temp file)."""

    def __init__(self, directory: Path, name: str):
        directory.mkdir(parents=True, exist_ok=True)
        self.ids_path = directory / f".{name}.ids.tmp"
        self.types_path = directory / f".{name}.types.tmp"
        self.rid_path = directory / f".{name}.record_ids.tmp"
        self._ids = open(self.ids_path, "wb")
        self._types = open(self.types_path, "wb")
        self._rids = open(self.rid_path, "wb")
        # compact arrays (8 or 4 bytes an article) so memory stays small on big inputs
        self.offsets = array("q")
        self.lengths = array("i")
        self.categories = array("i")
        self.sources = array("i")
        self.type_counts = array("i")  # 4 per article: tokens of type 0..3
        self.tags = array("i")  # the output file each article goes to (its line's tag)
        self.files = array("i")  # input file code
        self.lines = array("q")  # 1-based line in that file
        self.rid_offsets = array("q", [0])  # record id bytes of article a: rid_offsets[a]:rid_offsets[a + 1]
        self._readers = None
        self.category_names: dict[str, int] = {}
        self.source_names: dict[str, int] = {}
        self.file_names: dict[str, int] = {}
        self.total = 0

    def _code(self, table: dict[str, int], name: str | None) -> int:
        if name is None:
            return -1
        return table.setdefault(name, len(table))

    def add(self, article: Article, tag: int = 0) -> np.ndarray:
        """Store one article; return its token counts per type."""
        self.tags.append(tag)
        counts = np.bincount(article.types, minlength=4)[:4]
        self.type_counts.extend(counts.tolist())
        self.offsets.append(self.total)
        self.lengths.append(len(article.ids))
        self.categories.append(self._code(self.category_names, article.category))
        self.sources.append(self._code(self.source_names, article.source))
        self.files.append(self._code(self.file_names, article.file))
        self.lines.append(article.line)
        rid = (article.record_id or "").encode()
        self._rids.write(rid)
        self.rid_offsets.append(self.rid_offsets[-1] + len(rid))
        self._ids.write(article.ids.tobytes())
        self._types.write(article.types.tobytes())
        self.total += len(article.ids)
        return counts

    def __len__(self) -> int:
        return len(self.lengths)

    def seal(self) -> None:
        for fh in (self._ids, self._types, self._rids):
            fh.close()
        self._readers = (open(self.ids_path, "rb"), open(self.types_path, "rb"), open(self.rid_path, "rb"))

    def record_id(self, a: int) -> str:
        fh = self._readers[2]
        fh.seek(self.rid_offsets[a])
        return fh.read(self.rid_offsets[a + 1] - self.rid_offsets[a]).decode()

    @staticmethod
    def names(table: dict[str, int]) -> list[str]:
        """A code table as a list: code -> name."""
        return sorted(table, key=table.get)

    def supervised(self, a: int) -> int:
        """Completion and end-of-article tokens of article a (the tokens trained at weight 1)."""
        return self.type_counts[4 * a + COMPLETION] + self.type_counts[4 * a + SEP]

    def read(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and types of global token positions [start, end)."""
        fi, ft, _ = self._readers
        fi.seek(4 * start)
        ft.seek(start)
        return (
            np.frombuffer(fi.read(4 * (end - start)), dtype=np.int32),
            np.frombuffer(ft.read(end - start), dtype=np.int8),
        )

    def range_counts(self, a: int, s: int, e: int) -> np.ndarray:
        """Tokens per type in range [s, e) of article a (no disk read for a whole article)."""
        if s == 0 and e == self.lengths[a]:
            return np.asarray(self.type_counts[4 * a : 4 * a + 4])
        base = self.offsets[a]
        return np.bincount(self.read(base + s, base + e)[1], minlength=4)[:4]

    def cleanup(self) -> None:
        if self._readers:
            for fh in self._readers:
                fh.close()
            self._readers = None
        for p in (self.ids_path, self.types_path, self.rid_path):
            if p.exists():
                os.unlink(p)


def materialize(
    store: TokenStore,
    seq: list[tuple[int, int, int]],
    pad_id: int,
    category_ids: dict[int, int] | None,
    ids: np.ndarray,
    types: np.ndarray,
    cats: np.ndarray | None,
) -> None:
    """Fill one row (ids, types, cats views of length L) with a sequence, padded with ``pad_id`` / type 2."""
    ids.fill(pad_id)
    types.fill(PADDING)
    if cats is not None:
        cats.fill(-1)
    pos = 0
    for a, s, e in seq:
        base = store.offsets[a]
        i, t = store.read(base + s, base + e)
        ids[pos : pos + e - s] = i
        types[pos : pos + e - s] = t
        if cats is not None:
            cats[pos : pos + e - s] = category_ids.get(store.categories[a], -1)
        pos += e - s


def has_completion(store: TokenStore, seq: list[tuple[int, int, int]]) -> bool:
    return any(store.range_counts(a, s, e)[COMPLETION] for a, s, e in seq)


def write_hdf5(
    path: Path,
    store: TokenStore,
    seqs,
    max_len: int,
    pad_id: int,
    category_ids: dict[int, int] | None,
    truncated: np.ndarray | None = None,
) -> None:
    """Write sequences to ``path`` atomically (temp name, then rename), in blocks of rows, with their provenance
    (``truncated[a]``: article a lost tokens somewhere in the split)."""
    import h5py

    tmp = path.with_name(f".{path.name}.tmp")
    n = len(seqs)
    with h5py.File(tmp, "w") as f:
        chunk = (max(1, min(n, 64)), max_len)
        d_ids = f.create_dataset("input_ids", (n, max_len), dtype="i4", chunks=chunk if n else None)
        d_types = f.create_dataset("token_type_ids", (n, max_len), dtype="i4", chunks=chunk if n else None)
        d_cats = (
            f.create_dataset("category_ids", (n, max_len), dtype="i4", chunks=chunk if n else None)
            if category_ids is not None
            else None
        )
        block_ids = np.empty((BLOCK_ROWS, max_len), dtype=np.int32)  # reused: memory flat in n
        block_types = np.empty_like(block_ids)
        block_cats = np.empty_like(block_ids) if d_cats is not None else None
        for lo in range(0, n, BLOCK_ROWS):
            hi = min(n, lo + BLOCK_ROWS)
            for r, k in enumerate(range(lo, hi)):
                materialize(
                    store,
                    seqs[k],
                    pad_id,
                    category_ids,
                    block_ids[r],
                    block_types[r],
                    block_cats[r] if block_cats is not None else None,
                )
            d_ids[lo:hi] = block_ids[: hi - lo]
            d_types[lo:hi] = block_types[: hi - lo]
            if d_cats is not None:
                d_cats[lo:hi] = block_cats[: hi - lo]
        write_provenance(f, store, seqs, truncated)
    os.replace(tmp, path)

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
from bisect import bisect_right
from pathlib import Path
from typing import NamedTuple

import numpy as np

from tokenization_prep.articles import Article
from tokenization_prep.provenance import write_provenance
from tokenization_prep.schema import COMPLETION, PADDING, SEP

BLOCK_ROWS = 64


class Segment(NamedTuple):
    """One writer's token files, and where its tokens and record-id bytes start in the store that reads them."""

    base: int  # first token position
    rid_base: int  # first record-id byte
    ids: str
    types: str
    rids: str


_INT64 = ("offsets", "lines", "rid_offsets")
_INT32 = ("lengths", "categories", "sources", "type_counts", "tags", "files")
_TABLES = (("categories", "category_names"), ("sources", "source_names"), ("files", "file_names"))


class TokenStore:
    """Append-only article store on disk with per-article offset, length, category and source codes, and the
    provenance of each article (input file code, line, record id: ids go to a third temp file).

    One process writes a store; ``concat`` joins the stores a split's shards wrote (in worker processes) into one
    that reads each shard's files (its ``segments``), and ``subset`` keeps the articles one output file needs. A
    store pickles without its open files, so it can go to a worker process or a Ray task."""

    def __init__(self, directory: Path, name: str):
        directory.mkdir(parents=True, exist_ok=True)
        paths = [str(directory / f".{name}.{kind}.tmp") for kind in ("ids", "types", "record_ids")]
        self.__setstate__({"segments": [Segment(0, 0, *paths)], "total": 0})
        self._writers = [open(p, "wb") for p in paths]
        # compact arrays (8 or 4 bytes an article) so memory stays small on big inputs: offsets, lines (1-based, in
        # its input file), rid_offsets (record id bytes of article a: rid_offsets[a]:rid_offsets[a + 1]); lengths,
        # category/source/input-file codes, type_counts (4 per article: tokens of type 0..3), tags (the output file
        # each article goes to: its line's tag)
        for name in _INT64:
            setattr(self, name, array("q", [0] if name == "rid_offsets" else []))
        for name in _INT32:
            setattr(self, name, array("i"))
        self.category_names: dict[str, int] = {}
        self.source_names: dict[str, int] = {}
        self.file_names: dict[str, int] = {}
        self.rid_lo = self.rid_hi = None  # a subset's record id ranges (rid_offsets stays empty)

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
        ids, types, rids = self._writers
        rids.write(rid)
        self.rid_offsets.append(self.rid_offsets[-1] + len(rid))
        ids.write(article.ids.tobytes())
        types.write(article.types.tobytes())
        self.total += len(article.ids)
        return counts

    def __len__(self) -> int:
        return len(self.lengths)

    def seal(self) -> None:
        """Done writing: the files are closed and read back from here on."""
        for fh in self._writers:
            fh.close()
        self._writers = []

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_readers", "_writers")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._readers, self._writers = {}, []

    @classmethod
    def concat(cls, stores: list["TokenStore"]) -> "TokenStore":
        """One store over sealed ``stores``, in order: what one process adding all their articles would hold (name
        codes renumbered in order of first use, as that process would have numbered them)."""
        out = cls.__new__(cls)
        out.__setstate__({"segments": [], "total": 0, "rid_lo": None, "rid_hi": None})
        parts: dict[str, list[np.ndarray]] = {name: [] for name in _INT64 + _INT32}
        parts["rid_offsets"].append(np.zeros(1, np.int64))
        tables = {table: {} for _, table in _TABLES}
        rid_total = 0
        for s in stores:
            out.segments += [g._replace(base=g.base + out.total, rid_base=g.rid_base + rid_total) for g in s.segments]
            for name in _INT64 + _INT32:
                values = np.frombuffer(getattr(s, name), np.int64 if name in _INT64 else np.int32)
                if name == "offsets":
                    values = values + out.total
                elif name == "rid_offsets":
                    values = values[1:] + rid_total
                parts[name].append(values)
            for codes, table in _TABLES:  # the shard's codes -> the joined store's
                names = cls.names(getattr(s, table))
                remap = np.array([tables[table].setdefault(n, len(tables[table])) for n in names] + [-1], np.int32)
                parts[codes][-1] = remap[parts[codes][-1]]
            out.total += s.total
            rid_total += s.rid_offsets[-1]
        for name, chunks in parts.items():
            setattr(
                out, name, array("q" if name in _INT64 else "i", np.concatenate(chunks).tobytes() if chunks else b"")
            )
        out.category_names, out.source_names, out.file_names = (tables[t] for _, t in _TABLES)
        return out

    def subset(self, articles: np.ndarray) -> "TokenStore":
        """The articles ``articles`` (sorted store indices) as a store numbered 0.. in that order, reading the same
        files: what writing one output file needs, pickled small."""
        out = self.__class__.__new__(self.__class__)
        rid = np.frombuffer(self.rid_offsets, np.int64)
        out.__setstate__(
            {"segments": self.segments, "total": self.total, "rid_lo": rid[:-1][articles], "rid_hi": rid[1:][articles]}
        )
        for name in _INT64 + _INT32:
            values = np.frombuffer(getattr(self, name), np.int64 if name in _INT64 else np.int32)
            if name == "type_counts":
                values = values.reshape(-1, 4)[articles].ravel()
            elif name != "rid_offsets":
                values = values[articles]
            setattr(
                out, name, array("q" if name in _INT64 else "i", values.tobytes() if name != "rid_offsets" else b"")
            )
        out.category_names, out.source_names, out.file_names = self.category_names, self.source_names, self.file_names
        return out

    def _reader(self, k: int) -> tuple:
        if k not in self._readers:
            self._readers[k] = tuple(open(p, "rb") for p in self.segments[k][2:])
        return self._readers[k]

    def record_id(self, a: int) -> str:
        if self.rid_lo is not None:
            lo, hi = int(self.rid_lo[a]), int(self.rid_hi[a])
        else:
            lo, hi = self.rid_offsets[a], self.rid_offsets[a + 1]
        if hi == lo:
            return ""
        k = bisect_right(self.segments, lo, key=lambda g: g.rid_base) - 1
        fh = self._reader(k)[2]
        fh.seek(lo - self.segments[k].rid_base)
        return fh.read(hi - lo).decode()

    @staticmethod
    def names(table: dict[str, int]) -> list[str]:
        """A code table as a list: code -> name."""
        return sorted(table, key=table.get)

    def supervised(self, a: int) -> int:
        """Completion and end-of-article tokens of article a (the tokens trained at weight 1)."""
        return self.type_counts[4 * a + COMPLETION] + self.type_counts[4 * a + SEP]

    def read(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and types of token positions [start, end) (within one article)."""
        if end <= start:
            return np.zeros(0, np.int32), np.zeros(0, np.int8)
        k = bisect_right(self.segments, start, key=lambda g: g.base) - 1
        fi, ft, _ = self._reader(k)
        lo, n = start - self.segments[k].base, end - start
        fi.seek(4 * lo)
        ft.seek(lo)
        return np.frombuffer(fi.read(4 * n), dtype=np.int32), np.frombuffer(ft.read(n), dtype=np.int8)

    def range_counts(self, a: int, s: int, e: int) -> np.ndarray:
        """Tokens per type in range [s, e) of article a (no disk read for a whole article)."""
        if s == 0 and e == self.lengths[a]:
            return np.asarray(self.type_counts[4 * a : 4 * a + 4])
        base = self.offsets[a]
        return np.bincount(self.read(base + s, base + e)[1], minlength=4)[:4]

    def close(self) -> None:
        """Close the files this process opened to read."""
        for handles in self._readers.values():
            for fh in handles:
                fh.close()
        self._readers = {}

    def cleanup(self) -> None:
        """Close and delete the store's files."""
        self.seal()
        self.close()
        for seg in self.segments:
            for p in seg[2:]:
                if os.path.exists(p):
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

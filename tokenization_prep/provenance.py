"""Row provenance: for every piece of every packed row, the article it came from and where that article came from.

Stored in each HDF5 split file as the group ``provenance`` beside ``input_ids`` / ``token_type_ids`` (readers of
gdp's layout never open it). One entry per piece (an article, or the part of one that a row holds), in row order;
``row_offsets[r]:row_offsets[r + 1]`` are row r's pieces::

    provenance/row_offsets     int64 (rows + 1)
    provenance/row_position    int32  where the piece starts in its row
    provenance/token_start     int32  the piece's tokens within its article: [token_start, token_end)
    provenance/token_end       int32
    provenance/article_tokens  int32  the whole article's length
    provenance/truncated       int8   1: the article lost tokens in this split (overflow, or a dropped row)
    provenance/file            int32  code into file_names: the input file as given to the pipeline
    provenance/line            int64  1-based line in that file
    provenance/record_id       str    the record's ``id`` ("" when it had none)
    provenance/source          int32  code into source_names (-1: none)
    provenance/category        int32  code into category_names (-1: none)
    provenance/{file,source,category}_names   str
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GROUP = "provenance"
VERSION = 1
NAME_TABLES = ("file", "source", "category")


@dataclass
class Piece:
    """One article piece of a row, with its origin resolved to names."""

    file: str
    line: int
    record_id: str
    source: str | None
    category: str | None
    truncated: bool
    token_start: int
    token_end: int
    article_tokens: int
    row_position: int

    @property
    def origin(self) -> str:
        return f"{self.file}:{self.line}"


def write_provenance(f, store, seqs, truncated: np.ndarray | None) -> None:
    """Write the provenance group of the rows ``seqs`` (a packing Plan over ``store``'s articles) into h5py file f."""
    import h5py

    art = np.frombuffer(seqs.art, dtype=np.int32)
    start = np.frombuffer(seqs.start, dtype=np.int32)
    end = np.frombuffer(seqs.end, dtype=np.int32)
    bounds = np.frombuffer(seqs.bounds, dtype=np.int64)
    lens = end - start
    before = np.cumsum(lens, dtype=np.int64) - lens  # tokens before each piece, over all rows
    row_of = np.repeat(np.arange(len(bounds) - 1), np.diff(bounds))
    position = before - before[bounds[:-1]][row_of] if len(art) else before
    g = f.create_group(GROUP)
    g.attrs["version"] = VERSION
    g.create_dataset("row_offsets", data=bounds)
    g.create_dataset("row_position", data=position.astype(np.int32))
    g.create_dataset("token_start", data=start)
    g.create_dataset("token_end", data=end)
    g.create_dataset("article_tokens", data=np.frombuffer(store.lengths, dtype=np.int32)[art])
    flags = truncated[art] if truncated is not None else np.zeros(len(art), dtype=bool)
    g.create_dataset("truncated", data=flags.astype(np.int8))
    for name, values in (("file", store.files), ("source", store.sources), ("category", store.categories)):
        g.create_dataset(name, data=np.frombuffer(values, dtype=np.int32)[art])
    g.create_dataset("line", data=np.frombuffer(store.lines, dtype=np.int64)[art])
    text = h5py.string_dtype("utf-8")
    g.create_dataset("record_id", data=np.array([store.record_id(int(a)) for a in art], dtype=object), dtype=text)
    for name, table in (("file", store.file_names), ("source", store.source_names), ("category", store.category_names)):
        g.create_dataset(f"{name}_names", data=np.array(store.names(table), dtype=object), dtype=text)


def has_provenance(f) -> bool:
    return GROUP in f and "row_offsets" in f[GROUP]


def names(f, table: str) -> list[str]:
    """A name table (``file``, ``source`` or ``category``) of file f, code -> name."""
    return [x.decode() if isinstance(x, bytes) else x for x in f[GROUP][f"{table}_names"][:]]


def _name(table: list[str], code: int) -> str | None:
    return table[code] if code >= 0 else None


def name_tables(f) -> dict[str, list[str]]:
    """Every name table of file f (read once per file, not once per row)."""
    return {t: names(f, t) for t in NAME_TABLES}


def row_pieces(f, row: int, tables: dict[str, list[str]] | None = None) -> list[Piece]:
    """The pieces of one row of h5py file f, in row order (``tables``: ``name_tables(f)``, when reading many rows)."""
    g = f[GROUP]
    lo, hi = (int(x) for x in g["row_offsets"][row : row + 2])
    tables = tables or name_tables(f)
    cols = {
        k: g[k][lo:hi]
        for k in (
            "file",
            "line",
            "record_id",
            "source",
            "category",
            "truncated",
            "token_start",
            "token_end",
            "article_tokens",
            "row_position",
        )
    }
    out = []
    for i in range(hi - lo):
        rid = cols["record_id"][i]
        out.append(
            Piece(
                tables["file"][cols["file"][i]],
                int(cols["line"][i]),
                rid.decode() if isinstance(rid, bytes) else rid,
                _name(tables["source"], cols["source"][i]),
                _name(tables["category"], cols["category"][i]),
                bool(cols["truncated"][i]),
                int(cols["token_start"][i]),
                int(cols["token_end"][i]),
                int(cols["article_tokens"][i]),
                int(cols["row_position"][i]),
            )
        )
    return out


class TokenGroups:
    """Per token of a file's rows, the source and category of its article as codes into name lists shared by
    several files (``names``), for per-source and per-category losses. Files without provenance give -1."""

    TABLES = ("source", "category")

    def __init__(self, files: list):
        self.pieces, local = [], []
        for f in files:
            if not has_provenance(f):
                self.pieces.append(None)
                local.append(None)
                continue
            g = f[GROUP]
            self.pieces.append(
                {k: g[k][:] for k in ("row_offsets", "row_position", "token_start", "token_end", *self.TABLES)}
            )
            local.append({t: names(f, t) for t in self.TABLES})
        self.names = {t: sorted({n for tabs in local if tabs for n in tabs[t]}) for t in self.TABLES}
        for p, tabs in zip(self.pieces, local):  # local codes -> shared codes (-1 stays -1)
            if p is not None:
                for t in self.TABLES:
                    remap = np.array([self.names[t].index(n) for n in tabs[t]] + [-1], dtype=np.int32)
                    p[t] = remap[p[t]]

    def row(self, file: int, row: int, seq_len: int) -> dict[str, np.ndarray]:
        out = {t: np.full(seq_len, -1, dtype=np.int64) for t in self.TABLES}
        p = self.pieces[file]
        if p is None:
            return out
        for k in range(p["row_offsets"][row], p["row_offsets"][row + 1]):
            lo = p["row_position"][k]
            hi = lo + p["token_end"][k] - p["token_start"][k]
            for t in self.TABLES:
                out[t][lo:hi] = p[t][k]
        return out

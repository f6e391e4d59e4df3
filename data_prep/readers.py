"""Streaming record readers: a hub id, a file (jsonl, json, parquet, optionally .gz) or a directory.

Every record comes out as a ``RawRecord`` naming its file and 1-based line (row) number, either
with a parsed JSON object or with the reason it could not be read, so converters can count and
quarantine bad lines instead of crashing. A BOM, CRLF endings and blank lines are read normally.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import orjson

from common.errors import DataError, first_line
from common.files import clean_line, looks_like_hub_id

# A line longer than this is rejected unread (the biggest real record, in dolly, is ~60 kB).
MAX_LINE_BYTES = 8 * 1024 * 1024
DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")


@dataclass
class RawRecord:
    """One input record: its origin and either the decoded object or why it is unusable."""

    file: str
    line: int
    obj: dict | None
    error: str | None = None


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _read_capped_line(fh, limit: int) -> tuple[bytes | None, bool]:
    """Read one line without ever holding more than ``limit`` bytes; (line, too_long) or (None, _) at EOF."""
    line = fh.readline(limit + 1)
    if not line:
        return None, False
    if len(line) <= limit or line.endswith(b"\n"):
        return line, False
    while True:  # skip the rest of an oversized line in bounded chunks
        chunk = fh.readline(1 << 20)
        if not chunk or chunk.endswith(b"\n"):
            return line[:200], True


def decode_line(raw: bytes) -> tuple[dict | None, str | None]:
    """Parse one JSONL line into a dict, or return the reason it is not one."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"invalid UTF-8 at byte {exc.start}"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON ({str(exc).split(':')[0]})"
    if not isinstance(obj, dict):
        return None, f"JSON value is a {type(obj).__name__}, not an object"
    return obj, None


def iter_jsonl(path: Path, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[RawRecord]:
    """Stream a JSONL file (plain or gzip) line by line with bounded memory."""
    name = str(path)
    with _open_binary(path) as fh:
        lineno = 0
        while True:
            raw, too_long = _read_capped_line(fh, max_line_bytes)
            if raw is None:
                return
            lineno += 1
            if too_long:
                yield RawRecord(name, lineno, None, f"line longer than {max_line_bytes} bytes")
                continue
            raw = clean_line(raw, lineno == 1)
            if not raw.strip():
                continue
            obj, err = decode_line(raw)
            yield RawRecord(name, lineno, obj, err)


def iter_json_array(path: Path) -> Iterator[RawRecord]:
    """A ``.json`` file holding one array of objects (loaded whole: such files are small by nature)."""
    with _open_binary(path) as fh:
        head = fh.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"["):
        yield from iter_jsonl(path)  # a .json file that is really JSON Lines
        return
    with _open_binary(path) as fh:
        data = fh.read()
    obj, err = None, None
    try:
        obj = orjson.loads(data.removeprefix(b"\xef\xbb\xbf"))
    except orjson.JSONDecodeError as exc:
        err = f"not JSON ({str(exc).split(':')[0]})"
    if err:
        yield RawRecord(str(path), 1, None, err)
        return
    for i, item in enumerate(obj, start=1):
        if isinstance(item, dict):
            yield RawRecord(str(path), i, item)
        else:
            yield RawRecord(str(path), i, None, f"JSON value is a {type(item).__name__}, not an object")


def iter_parquet(path: Path, batch_size: int = 1024) -> Iterator[RawRecord]:
    """Stream a Parquet file in row batches; the 'line' is the 1-based row number."""
    import pyarrow.parquet as pq

    row = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size):
        for item in batch.to_pylist():
            row += 1
            yield RawRecord(str(path), row, item)


def iter_hub(hub_id: str, split: str = "train", data_files: str | None = None) -> Iterator[RawRecord]:
    """Stream a Hugging Face hub dataset (needs network and the ``datasets`` library)."""
    try:
        from datasets import load_dataset

        ds = load_dataset(hub_id, split=split, streaming=True, data_files=data_files)
        for i, item in enumerate(ds, start=1):
            yield RawRecord(f"{hub_id}:{data_files or split}", i, dict(item))
    except DataError:
        raise
    except Exception as exc:  # network, missing dataset, auth: one line for the user
        first = first_line(exc)
        raise DataError(
            f"{hub_id}: could not load from the Hugging Face hub ({first}); pass a local file or directory instead"
        ) from None


def iter_file(path: Path) -> Iterator[RawRecord]:
    """Dispatch on the file name: .parquet, .json (array), otherwise JSON Lines (.gz allowed)."""
    name = path.name
    if name.endswith(".parquet"):
        return iter_parquet(path)
    if name.endswith(".json") or name.endswith(".json.gz"):
        return iter_json_array(path)
    return iter_jsonl(path)


def data_files_in(directory: Path) -> list[Path]:
    """The data files of a directory, sorted by name so runs are reproducible."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name.endswith(DATA_SUFFIXES))


def iter_source(spec: str, split: str = "train") -> Iterator[RawRecord]:
    """Records of a hub id, a file or every data file of a directory."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = data_files_in(path)
        if not files:
            raise DataError(f"{spec}: directory holds no {', '.join(DATA_SUFFIXES)} files")
        for f in files:
            yield from iter_file(f)
    elif path.is_file():
        yield from iter_file(path)
    elif looks_like_hub_id(spec):
        yield from iter_hub(spec, split=split)
    else:
        raise DataError(f"{spec}: no such file or directory (and not a hub id of the form owner/name)")

"""File helpers every stage shares: atomic writing (a temp file beside the target, fsync, then rename), sha256,
and reading one raw input line (BOM and CRLF handled as every stage must).

A run killed at any point leaves either the old file or the complete new one, never a half-written file that looks
complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Yield a handle on a temp file that replaces ``path`` only if the block finishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def clean_line(raw: bytes, at_file_start: bool) -> bytes:
    """A raw line without its end of line (LF or CRLF) and, at the start of a file, without a BOM.

    >>> clean_line(b"\\xef\\xbb\\xbf{}\\r\\n", at_file_start=True)
    b'{}'
    >>> clean_line(b"\\xef\\xbb\\xbf{}\\n", at_file_start=False)
    b'\\xef\\xbb\\xbf{}'
    """
    if at_file_start and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    return raw.rstrip(b"\r\n")


def looks_like_hub_id(spec: str) -> bool:
    """``owner/name`` that is not a path on disk.

    >>> looks_like_hub_id("databricks/databricks-dolly-15k"), looks_like_hub_id("./data/x.jsonl")
    (True, False)
    """
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not Path(spec).exists() and not spec.startswith((".", "~"))

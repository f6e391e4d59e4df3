"""The contract between tokenization_prep and training: a tokenized dataset directory, as one typed schema.

tokenization_prep writes it; ``load_tokenized_dir``, the one verifier, checks it for training (before anything else
starts), for ``python -m tokenization_prep verify`` and for the demo:

- ``metadata.yaml``: a mapping with gdp's ``DatasetMetadata`` fields plus ours (``TokenizedMetadata``);
- finished and unaltered: ``manifest.sha256`` (ours, written last) or gdp's ``sha256/files_metadata.json``;
  every listed file exists with its recorded size, and a file whose modification time changed is re-hashed
  (gdp's rule); ``full=True`` re-hashes every file;
  every file but the log is listed in ``files_metadata.json`` when the output has one (gdp's ``validate_sha256``);
- ``train_{i}_of_{N}.hdf5`` for i = 1..N with N = ``number_of_training_files`` (dev likewise), nothing else, each
  of rows ``max_seq_length`` long, the smallest holding ``max_batch_size_*`` rows; ``test_files/`` likewise;
- the tokenizer: ``tokenizer_sha256`` (``tokenizer_fingerprint``), so a stage can refuse data tokenized with
  another tokenizer than its model's.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import DataError, first_line
from common.files import sha256_file
from tokenization_prep.tokenizer_io import load_tokenizer

PROMPT, COMPLETION, PADDING, SEP = 0, 1, 2, 3  # token_type_ids
# a preference row (``kind: preference``): the prompt once, the chosen reply, the rejected reply, padding
CHOSEN, REJECTED = COMPLETION, 4
KINDS = ("sft", "preference")
MANIFEST = "manifest.sha256"
MARKER = ".tokenization_prep"
FILES_METADATA = Path("sha256") / "files_metadata.json"
RERUN = "re-run tokenization_prep into a new directory"


class DatasetMetadata(BaseModel):
    """gdp's ``DatasetMetadata`` fields (``utils/metadata_generation.py``); extra keys are allowed, as there."""

    model_config = ConfigDict(extra="allow")
    max_seq_length: int = Field(ge=1)
    token_type_ids: bool
    vocab_size: int = Field(ge=1)
    tokenizer_model_type: str
    number_of_training_files: int = Field(ge=1)
    number_of_dev_files: int = Field(ge=0)
    number_of_test_files: int = Field(ge=0)
    max_batch_size_train: int
    max_batch_size_dev: int | None


class TokenizedMetadata(DatasetMetadata):
    """Ours beside gdp's: what a model's embedding must hold, special ids, and the tokenizer's fingerprint."""

    total_vocab_size: int | None = Field(None, ge=1)  # len(tokenizer): added tokens included
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    tokenizer_sha256: str | None = None
    provenance: bool = False
    kind: Literal["sft", "preference"] = "sft"  # missing in gdp's and older outputs: SFT rows
    data_licenses: list[str] | None = None  # SPDX ids from the inputs' data cards; missing in older outputs


@dataclass
class TokenizedDir:
    """A checked tokenized dataset directory."""

    path: Path
    meta: TokenizedMetadata
    splits: dict[str, list[Path]]  # "train" / "dev" -> HDF5 files in index order
    tokenizer_sha256: str | None

    @property
    def embedding_rows(self) -> int:
        """Rows a model's embedding needs: gdp's vocab_size leaves added tokens out, ours records len(tokenizer)."""
        return max(self.meta.vocab_size, self.meta.total_vocab_size or 0)


def tokenizer_fingerprint(tok) -> str:
    """sha256 of what decides token ids: the fast tokenizer's JSON (vocabulary, merges, normalizer, added tokens),
    without its truncation/padding state and without the chat template."""
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        blob = json.dumps(sorted(tok.get_vocab().items()))
    else:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
        blob = json.dumps(spec, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def dir_tokenizer_sha256(directory: Path) -> str | None:
    """The fingerprint of the tokenizer saved in ``directory`` (None when it holds none)."""
    if not any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None
    try:
        return tokenizer_fingerprint(load_tokenizer(str(directory)))
    except (DataError, OSError, ValueError):
        return None


def read_metadata(out: Path) -> TokenizedMetadata:
    path = out / "metadata.yaml"
    if not path.is_file():
        raise DataError(f"{path}: missing; point at a tokenization_prep output directory ({RERUN} if it is one)")
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise DataError(f"{path}: not readable YAML ({first_line(exc)}); {RERUN}") from None
    if not isinstance(raw, dict):
        raise DataError(f"{path}: must be a YAML mapping of dataset facts, found {type(raw).__name__}; {RERUN}")
    try:
        return TokenizedMetadata.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise DataError(f"{path}: {fields}; {RERUN}") from None


def split_files(out: Path, split: str) -> list[tuple[int, int, Path]]:
    """(i, N, path) of every ``{split}_{i}_of_{N}.hdf5``, by i."""
    pat = re.compile(rf"{split}_(\d+)_of_(\d+)\.hdf5$")
    return sorted((int(m.group(1)), int(m.group(2)), p) for p in out.iterdir() if (m := pat.match(p.name)))


def files_metadata_key(out: Path, path: Path) -> str:
    """gdp's key in ``files_metadata.json``: the path relative to the output dir, separators turned into ``_``."""
    return path.relative_to(out).as_posix().replace("/", "_")


def listed_files(out: Path) -> list[Path]:
    """Every file gdp's ``validate_sha256`` expects a hash for: all but ``sha256/`` (and our temp files)."""
    return sorted(
        p
        for p in out.rglob("*")
        if p.is_file()
        and p.relative_to(out).parts[0] != "sha256"
        and not (p.name.startswith(".") and p.name.endswith(".tmp"))
    )


def _files_metadata(out: Path) -> dict | None:
    """gdp's ``files_metadata.json`` (key -> sha256, size, modified_time); None when the output has none."""
    fm = out / FILES_METADATA
    if not fm.is_file():
        return None
    try:
        listed = orjson.loads(fm.read_bytes())
    except orjson.JSONDecodeError:
        listed = None
    if not isinstance(listed, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
        for e in listed.values()
    ):
        raise DataError(f"{fm}: not gdp's files_metadata.json (key -> sha256, size, modified_time); {RERUN}")
    return listed


def _recorded(out: Path, listed: dict | None) -> dict[str, dict]:
    """Relative path -> {"size", "sha256", "mtime"} from files_metadata.json (gdp's) and the manifest (ours)."""
    files: dict[str, dict] = {}
    if listed is not None:
        on_disk = {files_metadata_key(out, p): p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
        for key, e in listed.items():
            if "logs" not in key:  # as gdp's validate_sha256: the log may be appended to later
                files[on_disk.get(key, key)] = {
                    "size": e["size"],
                    "sha256": e["sha256"],
                    "mtime": e.get("modified_time"),
                }
    manifest = out / MANIFEST
    if manifest.is_file():
        for line in manifest.read_text().splitlines():
            digest, _, rel = line.partition("  ")
            files.setdefault(rel, {})["manifest"] = digest
    return files


def _split_problems(out: Path, meta: TokenizedMetadata) -> tuple[list[str], dict[str, list[Path]]]:
    """Every ``train``/``dev`` file metadata.yaml names, present, and none of another output's."""
    problems, splits = [], {}
    for split, n in (("train", meta.number_of_training_files), ("dev", meta.number_of_dev_files)):
        found = split_files(out, split)
        problems += [
            f"{p.name}: metadata.yaml says {n} {split} files; the directory mixes outputs"
            for _, total, p in found
            if total != n
        ]
        missing = sorted(set(range(1, n + 1)) - {i for i, total, _ in found if total == n})
        problems += [f"{split}_{i}_of_{n}.hdf5: missing (metadata.yaml says {n} {split} files)" for i in missing]
        splits[split] = [p for _, total, p in found if total == n]
    if meta.number_of_test_files:
        n = meta.number_of_test_files
        problems += [
            f"test_files/test_{i}_of_{n}: missing (metadata.yaml says {n} test files)"
            for i in range(1, n + 1)
            if not any((out / "test_files").glob(f"test_{i}_of_{n}.*"))
        ]
    return problems, splits


def _file_problems(out: Path, full: bool) -> list[str]:
    """Files changed since they were written: gdp's checksums and our manifest; files neither lists.

    A file is re-hashed when its modification time differs from the recorded one (gdp's rule), when only the
    manifest lists it, or with ``full``."""
    listed = _files_metadata(out)
    problems = []
    for rel, e in sorted(_recorded(out, listed).items()):
        path = out / rel
        if not path.is_file():
            problems.append(f"{rel}: missing (listed in {MANIFEST} or {FILES_METADATA}); the directory was altered")
            continue
        size = path.stat().st_size
        if e.get("size") is not None and size != e["size"]:
            problems.append(f"{rel}: {size} bytes, {e['size']} when written; the file was altered")
            continue
        rehash = full or (e.get("mtime") is not None and path.stat().st_mtime != e["mtime"]) or "size" not in e
        if rehash and rel != MANIFEST and sha256_file(path) != e.get("manifest", e.get("sha256")):
            problems.append(f"{rel}: sha256 differs from when it was written; the file was altered")
    if listed is not None:
        problems += [
            f"{key}: not listed in {FILES_METADATA}"
            for key in sorted({files_metadata_key(out, p) for p in listed_files(out)} - set(listed))
            if "logs" not in key
        ]
    return problems


def _hdf5_problems(meta: TokenizedMetadata, splits: dict[str, list[Path]]) -> list[str]:
    """Each HDF5 split's rows are ``max_seq_length`` long, and its smallest file holds ``max_batch_size_*`` rows."""
    import h5py

    problems = []
    for split, files in splits.items():
        rows = []
        for path in files:
            try:
                with h5py.File(path, "r") as f:
                    shape = f["input_ids"].shape
                    if shape[1] != meta.max_seq_length or f["token_type_ids"].shape != shape:
                        problems.append(f"{path.name}: rows of shape {shape}, metadata says {meta.max_seq_length}")
                    elif meta.kind == "preference":
                        problems += _preference_row_problems(path.name, f["token_type_ids"])
                    rows.append(shape[0])
            except (OSError, KeyError) as exc:
                problems.append(f"{path.name}: not a readable HDF5 split ({first_line(exc)})")
        limit = meta.max_batch_size_train if split == "train" else meta.max_batch_size_dev
        if rows and limit is not None and min(rows) != limit:
            problems.append(f"max_batch_size_{split} is {limit} but the smallest {split} file holds {min(rows)} rows")
    return problems


# a preference row's token types in their order: prompt, chosen, rejected, padding
_PAIR_ORDER = {PROMPT: 0, CHOSEN: 1, REJECTED: 2, PADDING: 3}


def _preference_row_problems(name: str, types, block: int = 4096) -> list[str]:
    """The first row of a ``kind: preference`` file that is not prompt, chosen, rejected, padding in this order,
    each of the first three at least one token (read in blocks of rows)."""
    rank = np.full(max(_PAIR_ORDER) + 1, -1, dtype=np.int8)
    rank[list(_PAIR_ORDER)] = list(_PAIR_ORDER.values())
    for lo in range(0, types.shape[0], block):
        t = types[lo : lo + block]
        r = np.where((t >= 0) & (t < len(rank)), rank[np.clip(t, 0, len(rank) - 1)], -1)
        bad = (r < 0).any(axis=1) | (np.diff(r, axis=1) < 0).any(axis=1)
        for kind in (PROMPT, CHOSEN, REJECTED):
            bad |= ~(t == kind).any(axis=1)
        if bad.any():
            return [
                f"{name}: row {lo + int(np.argmax(bad))} is not a preference row (prompt, chosen, rejected tokens, "
                "each at least one, then padding)"
            ]
    return []


class TokenizedDirError(DataError):
    """A tokenized dir that breaks the contract; ``problems`` lists every problem found (the message, the first)."""

    def __init__(self, out: Path, problems: list[str]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{out}: {problems[0]}{more}; {RERUN}")


def load_tokenized_dir(out: Path, full: bool = False, max_seq_length: int | None = None) -> TokenizedDir:
    """The one check of a tokenized dataset directory (see the module doc), for training, ``python -m
    tokenization_prep verify`` and the demo: a ``TokenizedDir``, or one ``DataError`` line naming the first problem
    (``TokenizedDirError.problems``: all of them). ``full`` re-hashes every file; ``max_seq_length``, when given,
    must be the data's."""
    out = Path(out)
    if not out.is_dir():
        raise DataError(f"{out}: no such directory; run tokenization_prep first")
    unfinished = TokenizedDirError(out, [f"unfinished (no {MANIFEST}, which tokenization_prep writes last)"])
    if (out / MARKER).exists() and not (out / MANIFEST).is_file():  # ours, interrupted
        raise unfinished
    meta = read_metadata(out)
    if not (out / MANIFEST).is_file() and not (out / FILES_METADATA).is_file():  # neither ours nor gdp's checksums
        raise unfinished
    problems = []
    if max_seq_length is not None and meta.max_seq_length != max_seq_length:
        problems.append(f"max_seq_length is {meta.max_seq_length}, expected {max_seq_length}")
    layout, splits = _split_problems(out, meta)
    problems += layout + _file_problems(out, full) + _hdf5_problems(meta, splits)
    if problems:
        raise TokenizedDirError(out, problems)
    digest = meta.tokenizer_sha256 or dir_tokenizer_sha256(out / "tokenizer")
    return TokenizedDir(out, meta, splits, digest)

"""The contract between tokenization_prep and training: a tokenized dataset directory, as one typed schema.

tokenization_prep writes it, training loads it with ``load_tokenized_dir`` before anything else starts:

- ``metadata.yaml``: a mapping with gdp's ``DatasetMetadata`` fields plus ours (``TokenizedMetadata``);
- finished and unaltered: ``manifest.sha256`` (ours, written last) or gdp's ``sha256/files_metadata.json``;
  every listed file exists with its recorded size, and a file whose modification time changed is re-hashed
  (gdp's rule); ``full=True`` re-hashes every file;
- ``train_{i}_of_{N}.hdf5`` for i = 1..N with N = ``number_of_training_files`` (dev likewise), nothing else;
- the tokenizer: ``tokenizer_sha256`` (``tokenizer_fingerprint``), so a stage can refuse data tokenized with
  another tokenizer than its model's.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import DataError, first_line
from common.files import sha256_file

PROMPT, COMPLETION, PADDING, SEP = 0, 1, 2, 3  # token_type_ids
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
    from tokenization_prep.tokenizer_io import load_tokenizer

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


def _recorded(out: Path) -> dict[str, dict]:
    """Relative path -> {"size", "sha256", "mtime"} from files_metadata.json (gdp's) and the manifest (ours)."""
    files: dict[str, dict] = {}
    fm = out / FILES_METADATA
    if fm.is_file():
        try:
            listed = orjson.loads(fm.read_bytes())
        except orjson.JSONDecodeError:
            raise DataError(f"{fm}: not valid JSON; {RERUN}") from None
        on_disk = {
            p.relative_to(out).as_posix().replace("/", "_"): p.relative_to(out).as_posix()
            for p in out.rglob("*")
            if p.is_file()
        }
        for key, e in listed.items() if isinstance(listed, dict) else []:
            if isinstance(e, dict) and "logs" not in key:  # gdp: the log may be appended to later
                files[on_disk.get(key, key)] = {
                    "size": e.get("size"),
                    "sha256": e.get("sha256"),
                    "mtime": e.get("modified_time"),
                }
    manifest = out / MANIFEST
    if manifest.is_file():
        for line in manifest.read_text().splitlines():
            digest, _, rel = line.partition("  ")
            files.setdefault(rel, {})["manifest"] = digest
    return files


def check_files(out: Path, full: bool = False) -> None:
    """Refuse, in one line, an unfinished directory or one whose files changed since they were written."""
    if not (out / MANIFEST).is_file() and ((out / MARKER).exists() or not (out / FILES_METADATA).is_file()):
        raise DataError(f"{out}: unfinished (no {MANIFEST}, which tokenization_prep writes last); {RERUN}")
    for rel, e in sorted(_recorded(out).items()):
        path = out / rel
        if not path.is_file():
            raise DataError(f"{path}: missing (listed in {MANIFEST}); the directory was altered; {RERUN}")
        st = path.stat()
        if e.get("size") is not None and st.st_size != e["size"]:
            raise DataError(f"{path}: {st.st_size} bytes, {e['size']} when written; the file was altered; {RERUN}")
        rehash = full or (e.get("mtime") is not None and st.st_mtime != e["mtime"]) or "size" not in e
        if rehash and rel != MANIFEST:
            digest = sha256_file(path)
            if digest != e.get("manifest", e.get("sha256")):
                raise DataError(f"{path}: sha256 differs from when it was written; the file was altered; {RERUN}")


def load_tokenized_dir(out: Path, full: bool = False) -> TokenizedDir:
    """Check a tokenized dataset directory against the schema (see the module doc); one DataError line if not."""
    out = Path(out)
    if not out.is_dir():
        raise DataError(f"{out}: no such directory; run tokenization_prep first")
    meta = read_metadata(out)
    check_files(out, full)
    splits = {}
    for split, n in (("train", meta.number_of_training_files), ("dev", meta.number_of_dev_files)):
        found = split_files(out, split)
        stray = [p.name for _, total, p in found if total != n]
        if stray:
            raise DataError(
                f"{out / stray[0]}: metadata.yaml says {n} {split} files; the directory mixes outputs; {RERUN}"
            )
        missing = sorted(set(range(1, n + 1)) - {i for i, _, _ in found})
        if missing:
            raise DataError(
                f"{out / f'{split}_{missing[0]}_of_{n}.hdf5'}: missing (metadata.yaml says {n} {split} files); {RERUN}"
            )
        splits[split] = [p for _, _, p in found]
    digest = meta.tokenizer_sha256 or dir_tokenizer_sha256(out / "tokenizer")
    return TokenizedDir(out, meta, splits, digest)

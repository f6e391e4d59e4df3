"""``metadata.yaml`` with gdp's ``DatasetMetadata`` fields and meanings (our extras beside), gdp's
``sha256/files_metadata.json``, and ``verify``: an output checked against both and against its HDF5 files.

gdp's fields: ``vocab_size`` is ``tokenizer.vocab_size`` (added tokens excluded), ``tokenizer_model_type`` is
``str(type(AutoConfig))``, ``max_batch_size_*`` the smallest file's row count, and per split gdp's metrics
(``train_sequences``, ``train_input_tokens`` ...). Ours: ``total_vocab_size`` (``len(tokenizer)``, what a
model's embedding must hold), eos/pad ids, packing, shuffle, seed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson
import yaml
from pydantic import ValidationError

from common.errors import DataError, first_line
from common.files import sha256_file
from tokenization_prep.schema import FILES_METADATA, DatasetMetadata, TokenizedMetadata, tokenizer_fingerprint


def dataset_metadata(cfg, tok, model_type: str, counts, sizes: dict, splits: dict, packing: str, pad: int) -> dict:
    """The metadata.yaml dict: gdp's keys with gdp's meanings, then ours."""
    meta = {
        "max_seq_length": cfg.max_seq_length,
        "token_type_ids": True,
        "vocab_size": tok.vocab_size,
        "tokenizer_model_type": model_type,
        "number_of_training_files": counts.train,
        "number_of_dev_files": counts.dev,
        "number_of_test_files": counts.test,
        "max_batch_size_train": min(sizes["train"]),
        "max_batch_size_dev": min(sizes["dev"]) if sizes.get("dev") else None,
    }
    for kind, m in splits.items():
        meta.update({f"{kind}_{k}": v for k, v in m.gdp_metrics(cfg.max_seq_length).items()})
    meta.update(
        {
            "total_vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": pad,
            "input_packing_config": packing,
            "shuffle": cfg.shuffle,
            "seed": cfg.seed,
            "category_ids": cfg.categories_path is not None,
            "tokenizer_dir": "tokenizer",
            "mix": cfg.mix,
            "mix_tokens": cfg.mix_tokens if cfg.mix else None,
            "provenance": True,
            "tokenizer_sha256": tokenizer_fingerprint(tok),
        }
    )
    TokenizedMetadata.model_validate(meta)
    return meta


def files_metadata_key(out: Path, path: Path) -> str:
    """gdp's key: the path relative to the output dir with separators turned into underscores."""
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


def write_files_metadata(out: Path, pending: dict[str, bytes]) -> None:
    """gdp's ``sha256/files_metadata.json``: key -> {sha256, size, modified_time} of every file in the output,
    plus ``pending`` files (name -> bytes) that will be written after it (the manifest, our last file)."""
    import time

    from common.files import atomic_write

    entries = {}
    for path in listed_files(out):
        st = path.stat()
        entries[files_metadata_key(out, path)] = {
            "sha256": sha256_file(path),
            "size": st.st_size,
            "modified_time": st.st_mtime,
        }
    for name, data in pending.items():  # gdp rehashes when the time differs, so the hash is what counts
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "modified_time": time.time()}
    (out / "sha256").mkdir(exist_ok=True)
    with atomic_write(out / FILES_METADATA) as fh:
        fh.write(orjson.dumps(entries))


def verify(out: Path, max_seq_length: int | None = None) -> list[str]:
    """Problems found in a tokenization output (empty: it is complete and intact).

    Checks metadata.yaml against gdp's ``DatasetMetadata`` (and ``max_seq_length`` if given), every file in
    ``sha256/files_metadata.json`` and ``manifest.sha256``, and the HDF5 files against the metadata."""
    import h5py

    problems = []
    meta_path = out / "metadata.yaml"
    if not meta_path.is_file():
        return [f"{meta_path}: missing"]
    try:
        meta = DatasetMetadata.model_validate(yaml.safe_load(meta_path.read_text()))
    except (yaml.YAMLError, ValidationError) as exc:
        return [f"{meta_path}: not gdp's DatasetMetadata ({first_line(exc)})"]
    if max_seq_length is not None and meta.max_seq_length != max_seq_length:
        problems.append(f"max_seq_length is {meta.max_seq_length}, expected {max_seq_length}")
    fm = out / FILES_METADATA
    if not fm.is_file():
        problems.append(f"{fm}: missing")
    else:
        try:
            listed = orjson.loads(fm.read_bytes())
        except orjson.JSONDecodeError:
            listed = None
        if not isinstance(listed, dict) or not all(
            isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("size"), int)
            for e in listed.values()
        ):
            return problems + [f"{fm}: not gdp's files_metadata.json (key -> sha256, size, modified_time)"]
        on_disk = {files_metadata_key(out, p): p for p in listed_files(out)}
        for key, entry in listed.items():
            path = on_disk.get(key)
            if path is None:
                problems.append(f"{key}: listed in {FILES_METADATA} but missing")
            elif "logs" in key:  # as gdp's validate_sha256: the log may be appended to later
                continue
            elif os.path.getsize(path) != entry["size"] or sha256_file(path) != entry["sha256"]:
                problems.append(f"{key}: changed since it was written (sha256 differs)")
        problems += [
            f"{key}: not listed in {FILES_METADATA}" for key in sorted(set(on_disk) - set(listed)) if "logs" not in key
        ]
    from tokenization_prep.pipeline import verify_manifest

    problems += [f"{rel}: does not match manifest.sha256" for rel in verify_manifest(out)]
    for kind, n in (("train", meta.number_of_training_files), ("dev", meta.number_of_dev_files)):
        rows = []
        for i in range(1, n + 1):
            path = out / f"{kind}_{i}_of_{n}.hdf5"
            if not path.is_file():
                problems.append(f"{path.name}: missing (metadata says {n} {kind} files)")
                continue
            try:
                with h5py.File(path, "r") as f:
                    shape = f["input_ids"].shape
                    if shape[1] != meta.max_seq_length or f["token_type_ids"].shape != shape:
                        problems.append(f"{path.name}: rows of shape {shape}, metadata says {meta.max_seq_length}")
                    rows.append(shape[0])
            except (OSError, KeyError) as exc:
                problems.append(f"{path.name}: not a readable HDF5 split ({first_line(exc)})")
        limit = meta.max_batch_size_train if kind == "train" else meta.max_batch_size_dev
        if rows and limit is not None and min(rows) != limit:
            problems.append(f"max_batch_size_{kind} is {limit} but the smallest {kind} file holds {min(rows)} rows")
    if meta.number_of_test_files:
        n = meta.number_of_test_files
        missing = [i for i in range(1, n + 1) if not any((out / "test_files").glob(f"test_{i}_of_{n}.*"))]
        if missing:
            problems.append(f"test_files/test_{missing[0]}_of_{n}: missing")
    return problems


def check_verify(out: Path, max_seq_length: int | None = None) -> None:
    """Raise DataError naming the first problem (and how many) if ``verify`` finds any."""
    problems = verify(out, max_seq_length)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"{out}: {problems[0]}{more}")

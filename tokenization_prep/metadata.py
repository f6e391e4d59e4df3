"""What a finished output carries beside its HDF5 files: ``metadata.yaml`` with gdp's ``DatasetMetadata`` fields and
meanings (our extras beside), gdp's ``sha256/files_metadata.json``, and our ``manifest.sha256`` (written last).
``schema.load_tokenized_dir`` checks all three.

gdp's fields: ``vocab_size`` is ``tokenizer.vocab_size`` (added tokens excluded), ``tokenizer_model_type`` is
``str(type(AutoConfig))``, ``max_batch_size_*`` the smallest file's row count, and per split gdp's metrics
(``train_sequences``, ``train_input_tokens`` ...). Ours: ``total_vocab_size`` (``len(tokenizer)``, what a
model's embedding must hold), eos/pad ids, packing, shuffle, seed, ``data_licenses`` (from the data cards).
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import orjson

from common.files import atomic_write, sha256_file
from tokenization_prep.schema import (
    FILES_METADATA,
    MANIFEST,
    MARKER,
    TokenizedMetadata,
    files_metadata_key,
    listed_files,
    tokenizer_fingerprint,
)


def dataset_metadata(
    cfg, tok, model_type: str, counts, sizes: dict, splits: dict, pad: int, data_licenses: list[str] | None = None
) -> dict:
    """The metadata.yaml dict: gdp's keys with gdp's meanings, then ours (``data_licenses``: the SPDX ids of the
    inputs' data cards, ``tokenization_prep/data_card.py``; None without one)."""
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
    for split, m in splits.items():
        meta.update({f"{split}_{k}": v for k, v in m.gdp_metrics(cfg.max_seq_length).items()})
    meta.update(
        {
            "total_vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": pad,
            "input_packing_config": str(cfg.input_packing_config),
            "shuffle": cfg.shuffle,
            "seed": cfg.seed,
            "category_ids": cfg.categories_path is not None,
            "tokenizer_dir": "tokenizer",
            "mix": str(cfg.mix) if cfg.mix else None,
            "mix_tokens": cfg.mix_tokens if cfg.mix else None,
            "provenance": True,
            "tokenizer_sha256": tokenizer_fingerprint(tok),
            "data_licenses": data_licenses,
        }
    )
    TokenizedMetadata.model_validate(meta)
    return meta


def write_files_metadata(out: Path, pending: dict[str, bytes], known: dict[Path, str] | None = None) -> None:
    """gdp's ``sha256/files_metadata.json``: key -> {sha256, size, modified_time} of every file in the output,
    plus ``pending`` files (name -> bytes) that will be written after it (the manifest, our last file); ``known``:
    hashes already taken (path -> sha256), not taken again."""
    entries = {}
    for path in listed_files(out):
        st = path.stat()
        entries[files_metadata_key(out, path)] = {
            "sha256": (known or {}).get(path) or sha256_file(path),
            "size": st.st_size,
            "modified_time": st.st_mtime,
        }
    for name, data in pending.items():  # gdp rehashes when the time differs, so the hash is what counts
        entries[name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "modified_time": time.time()}
    (out / "sha256").mkdir(exist_ok=True)
    with atomic_write(out / FILES_METADATA) as fh:
        fh.write(orjson.dumps(entries))


def write_manifest(out: Path) -> None:
    """gdp's ``sha256/files_metadata.json``, then ``manifest.sha256`` (sha256 of every file but the log, the marker
    and ``sha256/``), written last: an output without it is incomplete."""
    entries = sorted(
        p
        for p in out.rglob("*")
        if p.is_file()
        and p.name not in (MANIFEST, MARKER, "logs.log")
        and not p.name.startswith(".")
        and p.relative_to(out).parts[0] != "sha256"
    )
    hashes = {p: sha256_file(p) for p in entries}
    manifest = "".join(f"{hashes[p]}  {p.relative_to(out).as_posix()}\n" for p in entries).encode()
    write_files_metadata(out, {MANIFEST: manifest}, hashes)
    with atomic_write(out / MANIFEST) as fh:
        fh.write(manifest)

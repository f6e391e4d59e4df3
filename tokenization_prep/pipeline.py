"""gdp's ``pipeline``: input lines -> seeded shuffle -> train/dev/test splits -> balanced HDF5 files.

Memory stays flat: lines are indexed by byte offset (the shuffle permutes offsets, so inputs larger
than memory shuffle out of core) and tokens wait in an on-disk store until written. Every file is
written under a temp name and renamed; ``manifest.sha256`` is written last, so an output without it
is incomplete and a rerun replaces it with identical bytes.
"""

from __future__ import annotations

import hashlib
from array import array
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import yaml

from data_prep.atomic import atomic_write
from data_prep.readers import DataError
from tokenization_prep.articles import ArticleSettings, ArticleTokenizer
from tokenization_prep.hdf5_io import TokenStore, write_hdf5
from tokenization_prep.packing import PackingConfig
from tokenization_prep.prep import (SplitMetrics, category_table, clean_line, pack_store, record_sequences,
                                   tokenize_into)
from tokenization_prep.report import write_report
from tokenization_prep.tokenizer_io import load_tokenizer, tokenizer_model_type

MARKER = ".tokenization_prep"
MANIFEST = "manifest.sha256"


@dataclass
class PipelineConfig:
    """Every pipeline setting (gdp's flag names)."""

    input_path: str
    output_path: str
    pretrained_tokenizer: str
    max_seq_length: int = 2048
    input_packing_config: str = "full"
    article: ArticleSettings = field(default_factory=ArticleSettings)
    shuffle: str = "False"
    seed: int = 42
    num_training_splits: int = 32
    num_dev_splits: int | None = None
    num_test_splits: int | None = None
    dev_ratio: float = 0.0
    test_ratio: float = 0.0
    ignore_input_format_error: bool = False
    overwrite_output_path: bool = False
    categories_path: str | None = None


def input_files(spec: str) -> list[Path]:
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".jsonl", ".txt"))
        if files:
            return files
        raise DataError(f"--input_path {spec}: directory holds no .jsonl or .txt files")
    raise DataError(f"--input_path {spec}: no such file or directory")


def index_lines(files: list[Path]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(file index, byte offset, line number) of every non-blank line: 20 bytes a line, not the text."""
    fidx, offs, nums = array("i"), array("q"), array("q")
    for i, path in enumerate(files):
        with open(path, "rb") as fh:
            pos = 0
            for lineno, raw in enumerate(fh, start=1):
                if clean_line(raw, pos == 0).strip():
                    fidx.append(i)
                    offs.append(pos)
                    nums.append(lineno)
                pos += len(raw)
    return (np.frombuffer(fidx, np.int32), np.frombuffer(offs, np.int64), np.frombuffer(nums, np.int64))


def read_lines(files, fidx, offs, nums, order) -> Iterator[tuple[str, int, bytes]]:
    handles = [open(p, "rb") for p in files]
    try:
        for k in order:
            fh = handles[fidx[k]]
            fh.seek(offs[k])
            raw = clean_line(fh.readline(), offs[k] == 0)
            yield str(files[fidx[k]]), int(nums[k]), raw
    finally:
        for fh in handles:
            fh.close()


def prepare_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a finished output or a foreign directory; clear our own incomplete one."""
    if out.exists() and not out.is_dir():
        raise DataError(f"--output_path {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()):
        ours = (out / MARKER).exists()
        if not ours:
            raise DataError(f"--output_path {out} is not empty and was not written by tokenization_prep; "
                            "choose an empty or new directory")
        if (out / MANIFEST).exists() and not overwrite:
            raise DataError(f"--output_path {out} already holds a finished output; pass --overwrite_output_path")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by tokenization_prep; manifest.sha256 marks a finished output\n")
    except OSError as exc:
        raise DataError(f"--output_path {out}: cannot write ({exc.strerror})") from None


def split_counts(n: int, cfg: PipelineConfig) -> tuple[int, int, int]:
    if not (0 <= cfg.dev_ratio < 1 and 0 <= cfg.test_ratio < 1 and cfg.dev_ratio + cfg.test_ratio < 1):
        raise DataError("--dev_ratio and --test_ratio must be in [0, 1) and sum to less than 1")
    n_test, n_dev = round(n * cfg.test_ratio), round(n * cfg.dev_ratio)
    return n - n_dev - n_test, n_dev, n_test


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges over n items whose sizes differ by at most one."""
    base, extra = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (i < extra)
        out.append((lo, hi))
        lo = hi
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def run_split(name, order, files, index, tok, cfg, pconf, out, n_files, categories, skipped) -> tuple[SplitMetrics, list[int]]:
    """Tokenize, pack and write one split into ``n_files`` balanced HDF5 files."""
    metrics = SplitMetrics()
    store = TokenStore(out, name)
    try:
        tokenize_into(read_lines(files, *index, order), ArticleTokenizer(tok, cfg.article), store, metrics,
                      cfg.ignore_input_format_error, skipped, total=len(order), desc=f"tokenizing {name}")
        seqs = pack_store(store, cfg.max_seq_length, pconf, cfg.article.keep_prompt_only_sequences, metrics)
        if pconf.style == "bfd":  # bfd sorts by length: restore a random order of sequences
            perm = np.random.default_rng(cfg.seed + 1).permutation(len(seqs))
            seqs = seqs.select(perm)
        if len(seqs) < n_files:
            raise DataError(f"{name} split has {len(seqs)} sequences but {n_files} files were asked for; "
                            f"lower --num_{'training' if name == 'train' else name}_splits")
        record_sequences(store, seqs, cfg.max_seq_length, metrics)
        if seqs and metrics.tokens["completion"] == 0:
            raise DataError(f"{name} split has no completion tokens: nothing would be trained; check "
                            "--prompt_keyword/--completion_keyword or the packing settings")
        cat_ids = category_table(store, categories)
        sizes = []
        for i, (lo, hi) in enumerate(chunks(len(seqs), n_files)):
            write_hdf5(out / f"{name}_{i + 1}_of_{n_files}.hdf5", store, seqs.select(range(lo, hi)), cfg.max_seq_length,
                       tok.eos_token_id, cat_ids)
            sizes.append(hi - lo)
        return metrics, sizes
    finally:
        store.cleanup()


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run everything; return a summary dict (also the report lines under 'report')."""
    pconf = PackingConfig.parse(cfg.input_packing_config)
    files = input_files(cfg.input_path)
    tok = load_tokenizer(cfg.pretrained_tokenizer)
    categories = None
    if cfg.categories_path:
        try:
            categories = yaml.safe_load(Path(cfg.categories_path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise DataError(f"--categories_path {cfg.categories_path}: cannot read a JSON list ({exc})") from None
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            raise DataError(f"--categories_path {cfg.categories_path}: must hold a JSON list of category names")
    out = Path(cfg.output_path)
    prepare_output_dir(out, cfg.overwrite_output_path)
    index = index_lines(files)
    n = len(index[0])
    n_train, n_dev, n_test = split_counts(n, cfg)
    n_dev_files = cfg.num_dev_splits if cfg.num_dev_splits is not None else (1 if n_dev else 0)
    n_test_files = cfg.num_test_splits if cfg.num_test_splits is not None else (1 if n_test else 0)
    if n_train < cfg.num_training_splits or n_dev < n_dev_files or n_test < n_test_files:
        raise DataError(f"{n} input lines cannot fill {cfg.num_training_splits} training, {n_dev_files} dev and "
                        f"{n_test_files} test splits; lower --num_training_splits or the ratios")
    order = np.arange(n)
    if cfg.shuffle not in ("False", "false", "no"):
        order = np.random.default_rng(cfg.seed).permutation(n)
    test_order, dev_order, train_order = order[:n_test], order[n_test:n_test + n_dev], order[n_test + n_dev:]
    skipped: list[bytes] = []
    splits, sizes = {}, {}
    for name, part, n_files in (("train", train_order, cfg.num_training_splits), ("dev", dev_order, n_dev_files)):
        if n_files:
            splits[name], sizes[name] = run_split(name, part, files, index, tok, cfg, pconf, out, n_files,
                                                  categories, skipped)
    if n_test_files:
        (out / "test").mkdir(exist_ok=True)
        for i, (lo, hi) in enumerate(chunks(len(test_order), n_test_files)):
            with atomic_write(out / "test" / f"test_{i + 1}_of_{n_test_files}.jsonl") as fh:
                for _, _, raw in read_lines(files, *index, test_order[lo:hi]):
                    fh.write(raw + b"\n")
    if skipped:
        with atomic_write(out / "skipped_lines.jsonl") as fh:
            fh.write(b"\n".join(skipped) + b"\n")
    tok.save_pretrained(str(out / "tokenizer"))
    metadata = {
        "max_seq_length": cfg.max_seq_length, "token_type_ids": True, "vocab_size": len(tok),
        "tokenizer_model_type": tokenizer_model_type(tok),
        "number_of_training_files": cfg.num_training_splits, "number_of_dev_files": n_dev_files,
        "number_of_test_files": n_test_files, "max_batch_size_train": min(sizes["train"]),
        "max_batch_size_dev": min(sizes["dev"]) if sizes.get("dev") else None,
        "eos_token_id": tok.eos_token_id, "pad_token_id": tok.eos_token_id,
        "input_packing_config": str(pconf), "seed": cfg.seed, "shuffle": cfg.shuffle,
        "category_ids": categories is not None, "tokenizer_dir": "tokenizer",
    }
    with atomic_write(out / "metadata.yaml", "w") as fh:
        yaml.safe_dump(metadata, fh, sort_keys=False)
    lines = write_report(splits, cfg.max_seq_length, out, {"metadata": metadata})
    entries = sorted(p for p in out.rglob("*") if p.is_file() and p.name not in (MANIFEST, MARKER)
                     and not p.name.startswith("."))
    with atomic_write(out / MANIFEST, "w") as fh:
        for p in entries:
            fh.write(f"{sha256(p)}  {p.relative_to(out).as_posix()}\n")
    return {"output": str(out), "metadata": metadata, "report": lines, "splits": splits}


def verify_manifest(out: Path) -> list[str]:
    """Files whose sha256 no longer matches the manifest (empty list: all good)."""
    manifest = out / MANIFEST
    if not manifest.exists():
        return [f"{MANIFEST} missing"]
    bad = []
    for line in manifest.read_text().splitlines():
        digest, rel = line.split("  ", 1)
        if not (out / rel).exists() or sha256(out / rel) != digest:
            bad.append(rel)
    return bad


def cpu_threads(num_workers: int | None) -> None:
    """Cap the tokenizers thread pool (must run before the first encode)."""
    if num_workers:
        os.environ["RAYON_NUM_THREADS"] = str(num_workers)

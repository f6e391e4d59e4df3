"""gdp's ``pipeline``: input lines -> train/dev/test splits (gdp's round robin, or our seeded shuffle) ->
each file tokenized and packed -> balanced HDF5 files, metadata and checksums.

Memory stays flat: lines are indexed by byte offset (the shuffle permutes offsets, so inputs larger
than memory shuffle out of core) and tokens wait in an on-disk store until written. Every file is
written under a temp name and renamed; ``manifest.sha256`` is written last, so an output without it
is incomplete and a rerun replaces it with identical bytes.
"""

from __future__ import annotations

import os
import shutil
from array import array
from pathlib import Path
from typing import Iterator

import numpy as np
import orjson
import yaml

from common.errors import DataError
from common.files import atomic_write, clean_line, sha256_file
from tokenization_prep.articles import ArticleTokenizer
from tokenization_prep.hdf5_io import TokenStore, write_hdf5
from tokenization_prep.metadata import dataset_metadata, write_files_metadata
from tokenization_prep.mixing import MixSpec, realized, select, trainable_supervised
from tokenization_prep.packing import PackingConfig, Plan
from tokenization_prep.prep import (
    SplitMetrics,
    category_table,
    lost_articles,
    pack_store,
    record_sequences,
    tokenize_into,
)
from tokenization_prep.report import write_report
from tokenization_prep.schema import MANIFEST, MARKER
from tokenization_prep.settings import PipelineConfig  # noqa: F401 (re-exported: callers build it from here)
from tokenization_prep.splits import SplitCounts, balance, split_counts, split_names
from tokenization_prep.tokenizer_io import pad_id, tokenizer_for_data, tokenizer_model_type


def input_files(spec: str) -> list[Path]:
    """The input file, or a directory's .jsonl files (its .txt files if it has none), sorted by name."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in (".jsonl", ".txt"):
            raise DataError(f"--input_path {spec}: not a .jsonl or .txt file (gdp reads only those)")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".jsonl")
        files = files or sorted(p for p in path.iterdir() if p.is_file() and p.suffix == ".txt")
        if files:
            return files
        raise DataError(f"--input_path {spec}: directory holds no .jsonl or .txt files")
    raise DataError(f"--input_path {spec}: no such file or directory")


def index_lines(files: list[Path]) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], np.ndarray, int]:
    """((file index, byte offset, line number) of every non-blank line, its index among all lines, all lines).

    28 bytes a line, not the text. The index among all lines (blank ones too, files in order) is what gdp's
    round-robin split uses."""
    fidx, offs, nums, glob = array("i"), array("q"), array("q"), array("q")
    k = 0
    for i, path in enumerate(files):
        with open(path, "rb") as fh:
            pos = 0
            for lineno, raw in enumerate(fh, start=1):
                if clean_line(raw, pos == 0).strip():
                    fidx.append(i)
                    offs.append(pos)
                    nums.append(lineno)
                    glob.append(k)
                pos += len(raw)
                k += 1
    index = (np.frombuffer(fidx, np.int32), np.frombuffer(offs, np.int64), np.frombuffer(nums, np.int64))
    return index, np.frombuffer(glob, np.int64), k


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
            raise DataError(
                f"--output_path {out} is not empty and was not written by tokenization_prep; "
                "choose an empty or new directory"
            )
        if (out / MANIFEST).exists() and not overwrite:
            raise DataError(f"--output_path {out} already holds a finished output; pass --overwrite_output_path")
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MARKER).write_text("written by tokenization_prep; manifest.sha256 marks a finished output\n")
    except OSError as exc:
        raise DataError(f"--output_path {out}: cannot write ({exc.strerror})") from None


def chunks(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges over n items whose sizes differ by at most one."""
    base, extra = divmod(n, parts)
    out, lo = [], 0
    for i in range(parts):
        hi = lo + base + (i < extra)
        out.append((lo, hi))
        lo = hi
    return out


def assign_lines(glob: np.ndarray, counts: SplitCounts, shuffle: str, seed: int) -> list[np.ndarray]:
    """Per split index (train files, then test, then dev): positions into the line index, in file order.

    ``--shuffle False``: line k of the input (blank lines counted) goes to split ``k % splits``, as gdp does.
    Shuffled: a seeded permutation of the lines cut into contiguous, near-equal chunks (gdp: ``array_split``)."""
    n_splits = counts.total
    if shuffle == "False":
        which = glob % n_splits
        return [np.flatnonzero(which == j) for j in range(n_splits)]
    order = np.random.default_rng(seed).permutation(len(glob))
    return [order[lo:hi] for lo, hi in chunks(len(order), n_splits)]


def tokenize_kind(kind: str, parts: list[np.ndarray], files, index, tok, cfg, pconf, out, categories, skipped, warn):
    """Tokenize each file of one split kind (train or dev) on its own, pack it on its own, balance, write."""
    metrics, store = SplitMetrics(), TokenStore(out, kind)
    try:

        def tagged():  # every file's lines in turn, tagged with the file: one pipelined tokenizer pass
            for j, part in enumerate(parts):
                for file, lineno, raw in read_lines(files, *index, part):
                    yield file, lineno, raw, j

        tokenize_into(
            tagged(),
            ArticleTokenizer(tok, cfg.article),
            store,
            metrics,
            cfg.ignore_input_format_error,
            skipped,
            total=sum(len(p) for p in parts),
            desc=f"tokenizing {kind}",
        )
        requested = None
        if kind == "train" and cfg.mix:  # the mixed articles, in a seeded order, cut into near-equal files
            sup = trainable_supervised(store, cfg.max_seq_length, pconf)
            order, requested, warnings = select(store, MixSpec.parse(cfg.mix, cfg.mix_tokens), sup, cfg.seed)
            for w in warnings:
                warn(w)
            orders = [order[lo:hi] for lo, hi in chunks(len(order), len(parts))]
        else:  # each file's own articles (lines were tagged with their file)
            tags = np.frombuffer(store.tags, dtype=np.int32)
            cuts = np.searchsorted(tags, np.arange(len(parts) + 1), side="left")
            orders = [np.arange(cuts[j], cuts[j + 1], dtype=np.int32) for j in range(len(parts))]
        rows, allp = [], Plan()
        if pconf.style == "bfd":  # ours: best fit over the whole split, in a seeded order, cut into files
            allp = pack_store(
                store,
                cfg.max_seq_length,
                pconf,
                cfg.article.keep_prompt_only_sequences,
                metrics,
                np.concatenate(orders),
            )
            allp = allp.select(np.random.default_rng(cfg.seed + 1).permutation(len(allp)))
            rows = [list(range(lo, hi)) for lo, hi in chunks(len(allp), len(parts))]
        else:  # gdp: each file packed on its own
            for order in orders:
                seqs = pack_store(
                    store, cfg.max_seq_length, pconf, cfg.article.keep_prompt_only_sequences, metrics, order
                )
                rows.append(list(range(len(allp), len(allp) + len(seqs))))
                allp.extend(seqs)
        record_sequences(store, allp, cfg.max_seq_length, metrics)
        if allp and metrics.tokens["completion"] == 0:
            raise DataError(
                f"{kind} split has no completion tokens: nothing would be trained; check "
                "--prompt_keyword/--completion_keyword or the packing settings"
            )
        if not cfg.do_not_balance_hdf5:
            rows = balance(rows)
        empty = [j + 1 for j, r in enumerate(rows) if not r]
        if empty:
            raise DataError(
                f"{kind} file {empty[0]} of {len(rows)} would hold no sequences ({len(allp)} in all); "
                f"lower --num_{'training' if kind == 'train' else kind}_splits"
            )
        cat_ids = category_table(store, categories)
        truncated = lost_articles(store, metrics)
        metrics.mix = realized(
            store, metrics.trained, metrics.per_article["copies"], metrics.per_article["kept"], requested
        )
        for j, r in enumerate(rows):
            write_hdf5(
                out / f"{kind}_{j + 1}_of_{len(rows)}.hdf5",
                store,
                allp.select(r),
                cfg.max_seq_length,
                pad_id(tok),
                cat_ids,
                truncated,
            )
        return metrics, [len(r) for r in rows]
    finally:
        store.cleanup()


def write_lines(path: Path, files, index, part) -> None:
    with atomic_write(path) as fh:
        for _, _, raw in read_lines(files, *index, part):
            fh.write(raw + b"\n")


def check_log_path(spec: str | None) -> Path | None:
    """``--log_file_path`` checked before any work: a file (new or old) in an existing directory."""
    if not spec:
        return None
    path = Path(spec)
    if path.is_dir() or not path.parent.is_dir():
        raise DataError(f"--log_file_path {spec}: not a file in an existing directory")
    return path


def read_categories(spec: str | None) -> list[str] | None:
    if not spec:
        return None
    try:
        categories = orjson.loads(Path(spec).read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        raise DataError(f"--categories_path {spec}: cannot read a JSON list ({exc})") from None
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise DataError(f"--categories_path {spec}: must hold a JSON list of category names")
    return categories


def run_pipeline(cfg: PipelineConfig, log=print) -> dict:
    """Run everything; return a summary dict (also the report lines under 'report'). ``log`` gets warnings."""
    logged = [f"{k}: {v}" for k, v in cfg.model_dump(exclude={"article"}, by_alias=True).items()] + [
        f"{k}: {v}" for k, v in cfg.article.model_dump().items()
    ]

    def warn(line: str) -> None:
        logged.append(line)
        log(line)

    pconf = PackingConfig.parse(cfg.input_packing_config)  # the settings were validated when cfg was built
    files = input_files(cfg.input_path)
    if files[0].suffix == ".txt" and not cfg.article.is_text:
        cfg.article = cfg.article.model_copy(update={"is_text": True})
    counts = split_counts(
        sum(p.stat().st_size for p in files),
        cfg.num_training_splits,
        cfg.num_dev_splits,
        cfg.num_test_splits,
        cfg.dev_ratio,
        cfg.test_ratio,
    )
    for w in counts.warnings:
        warn(w)
    tok, render = tokenizer_for_data(cfg.pretrained_tokenizer, cfg.special_tokens_dict, cfg.apply_chat_template)
    if render:
        cfg.article = cfg.article.model_copy(update={"chat_render": render})
    model_type, why = tokenizer_model_type(tok, cfg.model_config_path or cfg.pretrained_tokenizer)
    categories = read_categories(cfg.categories_path)
    out = Path(cfg.output_path)
    log_path = check_log_path(cfg.log_file_path) or out / "logs.log"
    index, glob, n_all = index_lines(files)
    if n_all < counts.total + 2:
        raise DataError(
            f"{n_all} input lines cannot fill {counts.train} training, {counts.dev} dev and {counts.test} "
            f"test splits (gdp needs at least splits + 2 lines); lower --num_training_splits or the ratios"
        )
    prepare_output_dir(out, cfg.overwrite_output_path)
    parts = assign_lines(glob, counts, cfg.shuffle, cfg.seed)
    names = split_names(counts)
    by_kind = {kind: [p for p, (k, _) in zip(parts, names) if k == kind] for kind in ("train", "test", "dev")}
    if cfg.keep_split_jsonls:
        (out / "splits").mkdir(exist_ok=True)
    ext = ".txt" if cfg.article.is_text else ".jsonl"
    for part, (kind, i) in zip(parts, names):
        n_kind = getattr(counts, kind)
        if kind == "test":
            (out / "test_files").mkdir(exist_ok=True)
            write_lines(out / "test_files" / f"test_{i}_of_{n_kind}{ext}", files, index, part)
        elif cfg.keep_split_jsonls:
            write_lines(out / "splits" / f"{kind}_{i}_of_{n_kind}{ext}", files, index, part)
    skipped: list[bytes] = []
    splits, sizes = {}, {}
    for kind in ("train", "dev"):
        if by_kind[kind]:
            splits[kind], sizes[kind] = tokenize_kind(
                kind, by_kind[kind], files, index, tok, cfg, pconf, out, categories, skipped, warn
            )
    if skipped:
        with atomic_write(out / "skipped_lines.jsonl") as fh:
            fh.write(b"\n".join(skipped) + b"\n")
    if categories is not None:
        with atomic_write(out / "category_to_id.json") as fh:
            fh.write(orjson.dumps({c: i for i, c in enumerate(categories)}))
    if cfg.apply_chat_template:  # the template the data was rendered with goes with it
        tok.chat_template = tok.own_chat_template
    tok.save_pretrained(str(out / "tokenizer"))
    metadata = dataset_metadata(cfg, tok, model_type, counts, sizes, splits, str(pconf), pad_id(tok))
    with atomic_write(out / "metadata.yaml", "w") as fh:
        yaml.safe_dump(metadata, fh, sort_keys=True)
    lines = write_report(splits, cfg.max_seq_length, out, {"metadata": metadata})
    if why:  # said once the run succeeded, so that an error stays one line
        warn(
            f"warning: metadata.yaml's tokenizer_model_type is unknown ({why}); gdp's validator compares it with "
            "the model's config type: pass --model_config with the model's dir or hub id"
        )
    with atomic_write(log_path, "w") as fh:
        fh.write("\n".join(logged + lines) + "\n")
    entries = sorted(
        p
        for p in out.rglob("*")
        if p.is_file()
        and p.name not in (MANIFEST, MARKER, "logs.log")
        and not p.name.startswith(".")
        and p.relative_to(out).parts[0] != "sha256"
    )
    manifest = "".join(f"{sha256_file(p)}  {p.relative_to(out).as_posix()}\n" for p in entries).encode()
    write_files_metadata(out, {MANIFEST: manifest})
    with atomic_write(out / MANIFEST) as fh:  # last: an output without it is incomplete
        fh.write(manifest)
    return {"output": str(out), "metadata": metadata, "report": lines, "splits": splits, "counts": counts}


def verify_manifest(out: Path) -> list[str]:
    """Files whose sha256 no longer matches the manifest (empty list: all good)."""
    manifest = out / MANIFEST
    if not manifest.exists():
        return [f"{MANIFEST} missing"]
    bad = []
    for line in manifest.read_text().splitlines():
        digest, rel = line.split("  ", 1)
        if not (out / rel).exists() or sha256_file(out / rel) != digest:
            bad.append(rel)
    return bad


def cpu_threads(num_workers: int | None) -> None:
    """Cap the tokenizers thread pool (must run before the first encode)."""
    if num_workers:
        os.environ["RAYON_NUM_THREADS"] = str(num_workers)

"""``pipeline`` on preference records: pairs -> a ``kind: preference`` tokenized dir (docs/tokenization.md).

``pipeline.run_pipeline`` sends an input whose first record is a preference record here. The output keeps the
SFT contract (metadata.yaml with gdp's fields and ours, ``sha256/files_metadata.json``, ``manifest.sha256`` last,
``logs.log``, the data report, the ``provenance`` group, ``tokenizer/``), with one padded pair per row
(``preference.py``) and whole trees per split (``preference_splits.py``). Same inputs and seed: same bytes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import orjson
import yaml

from common.errors import ConfigError, DataError
from common.files import atomic_write
from common.plots import pyplot, save_png
from tokenization_prep.articles import Article, ArticleTokenizer, InputFormatError
from tokenization_prep.data_card import write_output_card
from tokenization_prep.hdf5_io import TokenStore, write_hdf5
from tokenization_prep.inputs import check_log_path, file_lines
from tokenization_prep.metadata import write_manifest
from tokenization_prep.packing import Plan
from tokenization_prep.preference import PairRecord, layout, parse_pair, tokenize_pairs
from tokenization_prep.preference_splits import dev_rule
from tokenization_prep.schema import TokenizedMetadata, tokenizer_fingerprint
from tokenization_prep.settings import PipelineConfig
from tokenization_prep.splits import SplitCounts, chunks
from tokenization_prep.tokenizer_io import pad_id, tokenizer_for_data, tokenizer_model_type

BATCH = 256
LISTED = 50  # truncated/dropped pairs per split in data_report.md and logs.log (all of them in data_report.json)
# settings that shape SFT rows only: for preference input they must stay at their defaults
SFT_ONLY = (
    "input_packing_config",
    "mix",
    "mix_tokens",
    "categories_path",
    "keep_split_jsonls",
    "do_not_balance_hdf5",
    "apply_chat_template",
)
SFT_ONLY_ARTICLE = ("packing_boundary", "attention_boundary", "keep_prompt_only_sequences")


def check_settings(cfg: PipelineConfig) -> None:
    """One ``ConfigError`` line for the first setting that has no meaning for preference rows."""
    for name in SFT_ONLY:
        if getattr(cfg, name) != PipelineConfig.model_fields[name].get_default(call_default_factory=True):
            raise ConfigError(
                f"--{name} {getattr(cfg, name)}: not for preference input (one pair a padded row: no packing, "
                "mix, categories or chat template); leave it out"
            )
    for name in SFT_ONLY_ARTICLE:
        if getattr(cfg.article, name) != type(cfg.article).model_fields[name].default:
            raise ConfigError(f"--{name} {getattr(cfg.article, name)}: not for preference input; leave it out")
    if cfg.num_test_splits or cfg.test_ratio:
        raise ConfigError("--num_test_splits/--test_ratio: preference input has train and dev splits only")


@dataclass
class SplitPairs:
    """One split's rows and figures."""

    rows: list[tuple[np.ndarray, np.ndarray, PairRecord, str | None]] = field(default_factory=list)
    trees: set[str] = field(default_factory=set)
    tokens: Counter = field(default_factory=Counter)
    sources: Counter = field(default_factory=Counter)
    lengths: list[int] = field(default_factory=list)  # every pair's full length, dropped ones too
    lost: list[dict] = field(default_factory=list)

    def as_dict(self, max_len: int) -> dict:
        padding = len(self.rows) * max_len - sum(self.tokens.values())
        return {
            "pairs": len(self.lengths),
            "trees": len(self.trees),
            "rows": len(self.rows),
            **{f"{k}_tokens": self.tokens[k] for k in ("prompt", "chosen", "rejected")},
            "padding_tokens": padding,
            "truncated": sum(r["status"] == "truncated" for r in self.lost),
            "dropped": sum(r["status"] == "dropped" for r in self.lost),
            "pairs_by_source": dict(sorted(self.sources.items())),
            "lost_pairs": self.lost,
        }


def read_pairs(files: list[Path], ignore_errors: bool, skipped: list[bytes]) -> list[PairRecord]:
    """Every line of the input files as a checked pair; a bad line is one ``DataError`` naming file:line (skipped
    into ``skipped_lines.jsonl`` under ``--ignore_input_format_error``)."""
    records = []
    for path in files:
        for file, lineno, raw in file_lines(path):
            try:
                rec = parse_pair(raw)
            except InputFormatError as exc:
                if not ignore_errors:
                    raise DataError(f"{file}:{lineno}: {exc}") from None
                skipped.append(raw)
                continue
            rec.file, rec.line = file, lineno
            records.append(rec)
    return records


def assign(records, atok, cfg: PipelineConfig, in_dev: Callable[[str], bool]) -> dict[str, SplitPairs]:
    """Tokenize, lay out and assign every pair to its tree's split."""
    splits = {"train": SplitPairs(), "dev": SplitPairs()}
    for lo in range(0, len(records), BATCH):
        batch = records[lo : lo + BATCH]
        for rec, t in zip(batch, tokenize_pairs(batch, atok)):
            s = splits["dev" if in_dev(rec.tree_id) else "train"]
            s.trees.add(rec.tree_id)
            s.lengths.append(t.length)
            s.sources[rec.source or "-"] += 1
            row = layout(t, cfg.max_seq_length, cfg.preference_overflow)
            status = "dropped" if row is None else row[2]
            if status:
                kept = 0 if row is None else len(row[0])
                s.lost.append(
                    {
                        "status": status,
                        "id": rec.id,
                        "file": rec.file,
                        "line": rec.line,
                        "source": rec.source,
                        "tokens": t.length,
                        "tokens_kept": kept,
                    }
                )
            if row is not None:
                ids, types, _ = row
                s.rows.append((ids, types, rec, status))
                n_prompt = int((types == 0).sum())
                s.tokens.update({"prompt": n_prompt, "chosen": len(t.chosen), "rejected": len(t.rejected)})
    return splits


def write_split(out: Path, name: str, s: SplitPairs, n_files: int, cfg: PipelineConfig, pad: int) -> list[int]:
    """The split's rows (seeded order unless ``--shuffle False``) into ``n_files`` near-equal HDF5 files."""
    order = np.arange(len(s.rows))
    if cfg.shuffle != "False":
        order = np.random.default_rng([cfg.seed, name == "dev"]).permutation(len(s.rows))
    store, plan = TokenStore(out, name), Plan()
    truncated = np.zeros(len(s.rows), dtype=bool)
    try:
        for k, i in enumerate(order):
            ids, types, rec, status = s.rows[i]
            store.add(Article(ids, types, None, rec.source, rec.id, rec.file, rec.line))
            plan.add([(k, 0, len(ids))])
            truncated[k] = status == "truncated"
        store.seal()
        sizes = []
        for j, (lo, hi) in enumerate(chunks(len(plan), n_files)):
            path = out / f"{name}_{j + 1}_of_{n_files}.hdf5"
            write_hdf5(path, store, plan.select(range(lo, hi)), cfg.max_seq_length, pad, None, truncated)
            sizes.append(hi - lo)
        return sizes
    finally:
        store.cleanup()


def file_counts(cfg: PipelineConfig, splits: dict[str, SplitPairs]) -> SplitCounts:
    """Files per split: ``--num_training_splits`` (default 1) and ``--num_dev_splits`` (default 1 when any pair is
    dev), each holding at least one row."""
    train = cfg.num_training_splits or 1
    dev = (1 if cfg.num_dev_splits is None else cfg.num_dev_splits) if splits["dev"].rows else 0
    if splits["dev"].rows and dev == 0:
        raise ConfigError(
            f"--num_dev_splits 0, but {len(splits['dev'].rows):,} pairs fall in dev trees; give 1 or more"
        )
    for name, n, flag in (("train", train, "--num_training_splits"), ("dev", dev, "--num_dev_splits")):
        if len(splits[name].rows) < n:
            raise DataError(
                f"{len(splits[name].rows):,} {name} rows cannot fill {n} {name} files; lower {flag}"
                + (" or check the dev rule (every pair fell in dev trees)" if name == "train" else "")
            )
    return SplitCounts(train, dev, 0, [])


def preference_metadata(cfg, tok, model_type, counts, sizes, splits, rule: str) -> dict:
    """metadata.yaml: gdp's fields and ours as for SFT, then ``kind: preference`` and the pair settings."""
    meta = {
        "max_seq_length": cfg.max_seq_length,
        "token_type_ids": True,
        "vocab_size": tok.vocab_size,
        "tokenizer_model_type": model_type,
        "number_of_training_files": counts.train,
        "number_of_dev_files": counts.dev,
        "number_of_test_files": 0,
        "max_batch_size_train": min(sizes["train"]),
        "max_batch_size_dev": min(sizes["dev"]) if sizes.get("dev") else None,
    }
    for name, s in splits.items():
        d = s.as_dict(cfg.max_seq_length)
        meta.update({f"{name}_{k}": d[k] for k in ("pairs", "trees", "rows", "truncated", "dropped")})
        meta[f"{name}_sequences"] = d["rows"]
    meta.update(
        {
            "total_vocab_size": len(tok),
            "eos_token_id": tok.eos_token_id,
            "pad_token_id": pad_id(tok),
            "input_packing_config": "none (one pair a padded row)",
            "shuffle": cfg.shuffle,
            "seed": cfg.seed,
            "category_ids": False,
            "tokenizer_dir": "tokenizer",
            "mix": None,
            "mix_tokens": None,
            "provenance": True,
            "tokenizer_sha256": tokenizer_fingerprint(tok),
            "kind": "preference",
            "preference_overflow": cfg.preference_overflow,
            "dev_rule": rule,
        }
    )
    TokenizedMetadata.model_validate(meta)
    return meta


def report_lines(splits: dict[str, SplitPairs], max_len: int, rule: str) -> list[str]:
    figures = {n: s.as_dict(max_len) for n, s in splits.items()}
    rows = "pairs trees rows prompt_tokens chosen_tokens rejected_tokens padding_tokens truncated dropped".split()
    out = [f"dev: {rule}", "", "| metric | train | dev |", "|---|---:|---:|"]
    out += [f"| {r.replace('_', ' ')} | {figures['train'][r]:,} | {figures['dev'][r]:,} |" for r in rows]
    out += ["", "| split | source | pairs |", "|---|---|---:|"]
    out += [f"| {n} | {src} | {c:,} |" for n, s in splits.items() for src, c in sorted(s.sources.items())]
    out += [
        "",
        "Truncated and dropped pairs:",
        "| split | status | origin | id | tokens | kept |",
        "|---|---|---|---|---:|---:|",
    ]
    more = []
    for n, s in splits.items():
        out += [
            f"| {n} | {r['status']} | {r['file']}:{r['line']} | {r['id']} | {r['tokens']:,} | {r['tokens_kept']:,} |"
            for r in s.lost[:LISTED]
        ]
        if len(s.lost) > LISTED:
            more.append(f"{n}: {len(s.lost) - LISTED:,} more")
    if more:
        out.append(f"({'; '.join(more)}: all under splits.*.lost_pairs in data_report.json)")
    return out


def write_report(out: Path, splits: dict[str, SplitPairs], max_len: int, rule: str, meta: dict) -> list[str]:
    """data_report.md / .json and pair_lengths.png; return the lines to print and log."""
    lines = report_lines(splits, max_len, rule)
    with atomic_write(out / "data_report.md", "w") as fh:
        fh.write("# Data report (preference pairs)\n\n" + "\n".join(lines) + "\n")
    data = {"splits": {n: s.as_dict(max_len) for n, s in splits.items()}, "dev_rule": rule, "metadata": meta}
    with atomic_write(out / "data_report.json") as fh:
        fh.write(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for n, s in splits.items():
        if s.lengths:
            ax.hist(s.lengths, bins=50, alpha=0.6, label=f"{n} ({len(s.lengths):,})")
    ax.axvline(max_len, color="k", linestyle="--", label=f"max_seq_length {max_len}")
    ax.set_xlabel("tokens per pair (prompt + chosen + rejected)")
    ax.set_ylabel("count")
    ax.legend()
    save_png(fig, out / "pair_lengths.png")
    return lines


def run_preference(cfg: PipelineConfig, files: list[Path], logged: list[str], warn, prepare_output_dir) -> dict:
    """The preference pipeline (``pipeline.run_pipeline`` passes its log lines, warner and output-dir guard)."""
    check_settings(cfg)
    tok, _ = tokenizer_for_data(cfg.pretrained_tokenizer, cfg.special_tokens_dict)
    article = cfg.article.model_copy(update={"prompt_keyword": "prompt", "completion_keyword": "completion"})
    model_type, why = tokenizer_model_type(tok, cfg.model_config_path or cfg.pretrained_tokenizer)
    out = Path(cfg.output_path)
    log_path = check_log_path(cfg.log_file_path) or out / "logs.log"
    in_dev, rule = dev_rule(cfg.dev_trees_from, cfg.dev_ratio, cfg.seed)
    skipped: list[bytes] = []
    records = read_pairs(files, cfg.ignore_input_format_error, skipped)
    if not records:
        raise DataError(f"--input_path {cfg.input_path}: no preference records to tokenize")
    splits = assign(records, ArticleTokenizer(tok, article), cfg, in_dev)
    counts = file_counts(cfg, splits)
    if cfg.dev_trees_from and not splits["dev"].rows:
        warn(f"warning: no pair's tree_id is a dev record id of {cfg.dev_trees_from}: the dev split is empty")
    prepare_output_dir(out, cfg.overwrite_output_path)
    pad = pad_id(tok)
    sizes = {
        n: write_split(out, n, splits[n], getattr(counts, n), cfg, pad) for n in ("train", "dev") if getattr(counts, n)
    }
    if skipped:
        with atomic_write(out / "skipped_lines.jsonl") as fh:
            fh.write(b"\n".join(skipped) + b"\n")
    tok.save_pretrained(str(out / "tokenizer"))
    meta = preference_metadata(cfg, tok, model_type, counts, sizes, splits, rule)
    meta["data_licenses"] = write_output_card(out, files)  # the inputs' data cards, combined
    with atomic_write(out / "metadata.yaml", "w") as fh:
        yaml.safe_dump(meta, fh, sort_keys=True)
    report = write_report(out, splits, cfg.max_seq_length, rule, meta)
    if why:
        warn(f"warning: metadata.yaml's tokenizer_model_type is unknown ({why}); pass --model_config")
    with atomic_write(log_path, "w") as fh:
        fh.write("\n".join(logged + report) + "\n")
    write_manifest(out)  # last: an output without it is incomplete
    return {"output": str(out), "metadata": meta, "report": report, "splits": splits, "counts": counts}

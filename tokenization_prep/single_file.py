"""``python -m tokenization_prep data_prep``: gdp's ``data_prep``, one JSONL/text file -> one HDF5 file.

No shuffle, no splits: the pipeline's settings less the split ones (``settings.PIPELINE_ONLY``).

    python -m tokenization_prep data_prep --input_path chat.jsonl --output_path chat.hdf5 \\
        --pretrained_tokenizer data/tokenizers/gpt-neox-20b --input_packing_config greedy::drop
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import Field

from common.cli import guard
from common.errors import DataError
from common.files import atomic_write
from common.settings import command_parser, parse_settings
from tokenization_prep.articles import ArticleTokenizer
from tokenization_prep.hdf5_io import TokenStore, write_hdf5
from tokenization_prep.inputs import check_log_path, file_lines, read_categories
from tokenization_prep.packing import PackingConfig
from tokenization_prep.settings import PIPELINE_ONLY, ArticleSettings, PipelineConfig
from tokenization_prep.tokenize_split import (
    SplitMetrics,
    category_table,
    lost_articles,
    pack_store,
    record_sequences,
    tokenize_into,
)
from tokenization_prep.tokenizer_io import cpu_threads, pad_id, tokenizer_for_data


class DataPrepConfig(PipelineConfig):
    """``data_prep``'s settings: the pipeline's (those in ``PIPELINE_ONLY`` stay at their defaults), and ``silent``."""

    silent: bool = Field(False, description="print nothing on stdout")


def data_prep_file(
    input_path: Path,
    output_path: Path,
    tokenizer,
    max_len: int,
    config: PackingConfig,
    settings: ArticleSettings,
    ignore_errors: bool = False,
    categories: list[str] | None = None,
) -> SplitMetrics:
    """gdp's ``data_prep``: one JSONL/text file -> one HDF5 file (no shuffle, no splits)."""
    metrics = SplitMetrics()
    store = TokenStore(output_path.parent, output_path.stem)
    skipped: list[bytes] = []
    try:
        bad = tokenize_into(
            file_lines(input_path), ArticleTokenizer(tokenizer, settings), store, metrics, ignore_errors, skipped
        )
        if bad.count:
            raise bad.error()
        seqs = pack_store(store, max_len, config, settings.keep_prompt_only_sequences, metrics)
        record_sequences(store, seqs, max_len, metrics)
        write_hdf5(
            output_path,
            store,
            seqs,
            max_len,
            pad_id(tokenizer),
            category_table(store, categories),
            lost_articles(store, metrics),
        )
    finally:
        store.cleanup()
    if skipped:
        with atomic_write(output_path.with_name(output_path.stem + ".skipped_lines.jsonl")) as fh:
            fh.write(b"\n".join(skipped) + b"\n")
    return metrics


def make_parser() -> argparse.ArgumentParser:
    return command_parser(
        "python -m tokenization_prep data_prep", __doc__, DataPrepConfig, config=True, exclude=PIPELINE_ONLY
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_settings(make_parser(), DataPrepConfig, argv)
    cpu_threads(cfg.num_workers)
    src, out = Path(cfg.input_path), Path(cfg.output_path)
    if not src.is_file():
        raise DataError(f"--input_path {src}: no such file")
    if out.suffix != ".hdf5":
        raise DataError(f"--output_path {out}: data_prep writes one HDF5 file; give a path ending in .hdf5")
    if out.exists() and not cfg.overwrite_output_path:
        raise DataError(f"--output_path {out} exists; pass --overwrite_output_path")
    categories = read_categories(cfg.categories_path)
    log_path = check_log_path(cfg.log_file_path)
    tok, render = tokenizer_for_data(cfg.pretrained_tokenizer, cfg.special_tokens_dict, cfg.apply_chat_template)
    article = cfg.article.model_copy(update={"is_text": src.suffix == ".txt", "chat_render": render})
    m = data_prep_file(
        src,
        out,
        tok,
        cfg.max_seq_length,
        cfg.input_packing_config,
        article,
        cfg.ignore_input_format_error,
        categories,
    )
    summary = f"wrote {m.sequences:,} sequences ({m.articles:,} articles from {m.lines:,} lines) to {out}"
    if log_path:
        settings = cfg.model_dump(exclude={"article", *PIPELINE_ONLY}, by_alias=True) | cfg.article.model_dump()
        with atomic_write(log_path, "w") as fh:
            fh.write("".join(f"{k}: {v}\n" for k, v in settings.items()) + summary + "\n")
    if not cfg.silent:
        print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(guard(main))

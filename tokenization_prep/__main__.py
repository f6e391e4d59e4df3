"""``python -m tokenization_prep {pipeline,data_prep,decode}``: a drop-in for generative_data_prep.

    python -m tokenization_prep pipeline --input_path data_prep/oasst1_dolly.jsonl \\
        --output_path tokenization_prep/oasst1_dolly_out --pretrained_tokenizer data/tokenizers/gpt-neox-20b \\
        --max_seq_length 2048 --input_packing_config greedy::drop --shuffle on_RAM --num_training_splits 8
    python -m tokenization_prep decode tokenization_prep/oasst1_dolly_out/train_1_of_8.hdf5 --index 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from data_prep.readers import DataError
from tokenization_prep.articles import BOUNDARIES, ArticleSettings


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input_path", "--input_file_path", dest="input_path", required=True,
                   help="JSONL (pairs, prompt/completion) or .txt file; pipeline also takes a directory")
    p.add_argument("--output_path", required=True)
    p.add_argument("--pretrained_tokenizer", default="bigscience/bloom", help="hub id or local tokenizer dir")
    p.add_argument("--max_seq_length", type=int, default=2048)
    p.add_argument("--input_packing_config", default="full",
                   help="full, or greedy|single|bfd :: drop|truncate_left|truncate_right")
    p.add_argument("--packing_boundary", choices=BOUNDARIES, default="jsonl")
    p.add_argument("--attention_boundary", choices=BOUNDARIES, default="jsonl")
    p.add_argument("--prompt_keyword", default="prompt")
    p.add_argument("--completion_keyword", default="completion")
    p.add_argument("--disable_space_separator", action="store_true")
    p.add_argument("--keep_prompt_only_sequences", action="store_true")
    p.add_argument("--ignore_input_format_error", action="store_true")
    p.add_argument("--categories_path", default=None, help="JSON list of category names -> category_ids")
    p.add_argument("--num_workers", type=int, default=None, help="tokenizer threads (output is identical)")
    p.add_argument("--overwrite_output_path", action="store_true")


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tokenization_prep", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    pipe = sub.add_parser("pipeline", help="shuffle, split and tokenize into train/dev HDF5 files")
    add_common(pipe)
    pipe.add_argument("--shuffle", default="False", choices=["False", "on_RAM", "large_file"],
                      help="seeded shuffle of input lines (both modes shuffle offsets, out of core)")
    pipe.add_argument("--seed", type=int, default=42)
    pipe.add_argument("--num_training_splits", type=int, default=32)
    pipe.add_argument("--num_dev_splits", type=int, default=None)
    pipe.add_argument("--num_test_splits", type=int, default=None)
    pipe.add_argument("--dev_ratio", type=float, default=0.0)
    pipe.add_argument("--test_ratio", type=float, default=0.0)
    one = sub.add_parser("data_prep", help="one input file -> one HDF5 file")
    add_common(one)
    dec = sub.add_parser("decode", help="print sequences of an HDF5 file with token types marked")
    dec.add_argument("file")
    dec.add_argument("--index", type=int, default=None)
    dec.add_argument("--pretrained_tokenizer", default=None, help="default: the tokenizer/ saved beside the file")
    return ap


def article_settings(args, is_text: bool = False) -> ArticleSettings:
    return ArticleSettings(args.prompt_keyword, args.completion_keyword, args.disable_space_separator,
                           args.keep_prompt_only_sequences, args.packing_boundary, args.attention_boundary, is_text)


def run(args) -> int:
    from tokenization_prep.pipeline import cpu_threads

    if args.command == "decode":
        from tokenization_prep.decode import decode_file
        from tokenization_prep.tokenizer_io import load_tokenizer

        tok = load_tokenizer(args.pretrained_tokenizer or str(Path(args.file).resolve().parent / "tokenizer"))
        for block in decode_file(Path(args.file), tok, args.index):
            print(block)
        return 0
    cpu_threads(args.num_workers)
    if args.max_seq_length < 1:
        raise DataError("--max_seq_length must be at least 1")
    if args.command == "data_prep":
        from tokenization_prep.packing import PackingConfig
        from tokenization_prep.prep import data_prep_file
        from tokenization_prep.tokenizer_io import load_tokenizer

        src, out = Path(args.input_path), Path(args.output_path)
        if not src.is_file():
            raise DataError(f"--input_path {src}: no such file")
        if out.exists() and not args.overwrite_output_path:
            raise DataError(f"--output_path {out} exists; pass --overwrite_output_path")
        config = PackingConfig.parse(args.input_packing_config)
        m = data_prep_file(src, out, load_tokenizer(args.pretrained_tokenizer), args.max_seq_length, config,
                           article_settings(args, src.suffix == ".txt"), args.ignore_input_format_error)
        print(f"wrote {m.sequences:,} sequences ({m.articles:,} articles from {m.lines:,} lines) to {out}")
        return 0
    from tokenization_prep.pipeline import PipelineConfig, run_pipeline

    cfg = PipelineConfig(args.input_path, args.output_path, args.pretrained_tokenizer, args.max_seq_length,
                         args.input_packing_config, article_settings(args), args.shuffle, args.seed,
                         args.num_training_splits, args.num_dev_splits, args.num_test_splits, args.dev_ratio,
                         args.test_ratio, args.ignore_input_format_error, args.overwrite_output_path,
                         args.categories_path)
    result = run_pipeline(cfg)
    print("\n".join(result["report"]))
    print(f"output: {result['output']} (metadata.yaml, data_report.md, PNG histograms, manifest.sha256)")
    return 0


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return run(args)
    except (DataError, ValueError, IndexError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

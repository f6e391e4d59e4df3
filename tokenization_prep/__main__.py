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

from common.cli import guard
from common.errors import DataError
from tokenization_prep.settings import BOUNDARIES, ArticleSettings, PipelineConfig, build


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--input_path",
        "--input_file_path",
        dest="input_path",
        required=True,
        help="JSONL (pairs, prompt/completion) or .txt file; pipeline also takes a directory",
    )
    p.add_argument("--output_path", required=True)
    p.add_argument("--pretrained_tokenizer", required=True, help="hub id or local tokenizer dir")
    p.add_argument(
        "--special_tokens_dict",
        default=None,
        help='special tokens to add, as a JSON dict, e.g. \'{"sep_token": "[SEP]"}\'',
    )
    p.add_argument("--prompt_prefix", default=None, help="text put before every non-empty prompt")
    p.add_argument("--prompt_postfix", default=None, help="text put after every non-empty prompt")
    p.add_argument(
        "--apply_chat_template",
        action="store_true",
        help="render pairs with the tokenizer's chat template (gdp's rule)",
    )
    p.add_argument(
        "--log_file_path",
        default=None,
        help="log file (pipeline default: logs.log in the output dir; data_prep: none unless given)",
    )
    p.add_argument("--max_seq_length", type=int, default=2048)
    p.add_argument(
        "--input_packing_config", default="full", help="full, or greedy|single|bfd :: drop|truncate_left|truncate_right"
    )
    p.add_argument("--packing_boundary", choices=BOUNDARIES, default="jsonl")
    p.add_argument("--attention_boundary", choices=BOUNDARIES, default="jsonl")
    p.add_argument("--prompt_keyword", default="prompt")
    p.add_argument("--completion_keyword", default="completion")
    p.add_argument("--disable_space_separator", action="store_true")
    p.add_argument("--keep_prompt_only_sequences", action="store_true")
    p.add_argument("--ignore_input_format_error", action="store_true")
    p.add_argument(
        "--categories_path",
        default=None,
        help="JSON file with the list of category names; each record's 'category' -> category_ids",
    )
    p.add_argument("--num_workers", type=int, default=None, help="tokenizer threads (output is identical)")
    p.add_argument("--overwrite_output_path", action="store_true")


def make_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tokenization_prep", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    pipe = sub.add_parser("pipeline", help="shuffle, split and tokenize into train/dev HDF5 files")
    add_common(pipe)
    pipe.add_argument(
        "--shuffle",
        default="False",
        nargs="?",
        const="False",
        choices=["False", "on_RAM", "large_file"],
        help="False: gdp's round robin, line k to split k %% splits; on_RAM/large_file: our seeded "
        "shuffle (both shuffle line offsets, out of core)",
    )
    pipe.add_argument("--seed", type=int, default=42, help="ours: the shuffle's seed (gdp's is unseeded)")
    pipe.add_argument(
        "--model_config",
        default=None,
        help="ours: model dir or hub id for metadata's tokenizer_model_type (default: the tokenizer's)",
    )
    pipe.add_argument(
        "--num_training_splits",
        type=int,
        default=None,
        help="default as gdp: 32 under 10 GiB of input, 128 under 100 GiB, else 256",
    )
    pipe.add_argument("--num_dev_splits", type=int, default=None)
    pipe.add_argument("--num_test_splits", type=int, default=None)
    pipe.add_argument("--dev_ratio", type=float, default=None)
    pipe.add_argument("--test_ratio", type=float, default=None)
    pipe.add_argument(
        "--mix",
        default=None,
        help="ours: SOURCE=SHARE,... of the training split's supervised tokens (dolly=0.7,oasst=0.3),"
        " or SOURCE=xN repeat factors (oig=x1001); sources from each record's 'source'",
    )
    pipe.add_argument(
        "--mix_tokens",
        default="input",
        help="ours: the supervised-token budget of share weights: input (default: the split's own), "
        "upsample (no named source loses data) or a number",
    )
    pipe.add_argument(
        "--do_not_balance_hdf5",
        action="store_true",
        help="keep each file's own rows (default: equal row counts within one, as gdp)",
    )
    pipe.add_argument("--keep_split_jsonls", action="store_true", help="keep splits/ with each file's input lines")
    one = sub.add_parser("data_prep", help="one input file -> one HDF5 file")
    add_common(one)
    one.add_argument("--silent", action="store_true", help="print nothing on stdout")
    ver = sub.add_parser("verify", help="check an output: gdp's metadata, sha256/files_metadata.json, HDF5 shapes")
    ver.add_argument("output_path")
    ver.add_argument("--max_seq_length", type=int, default=None)
    dec = sub.add_parser("decode", help="print sequences of an HDF5 file with token types marked")
    dec.add_argument("file")
    dec.add_argument("--index", type=int, default=None)
    dec.add_argument("--pretrained_tokenizer", default=None, help="default: the tokenizer/ saved beside the file")
    dec.add_argument(
        "--explain",
        action="store_true",
        help="print each article's origin (INPUT_FILE:LINE, source, id, category), then its text",
    )
    return ap


def settings(args) -> PipelineConfig:
    """The command's settings, built by keyword from its flags (a field is its flag) and validated in one place."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    article = {k: given[k] for k in ArticleSettings.model_fields if k in given}
    fields = {
        (f.alias or k): given[(f.alias or k)]
        for k, f in PipelineConfig.model_fields.items()
        if (f.alias or k) in given and k != "article"
    }
    return build(PipelineConfig, **fields, article=build(ArticleSettings, **article))


def run(args) -> int:
    from tokenization_prep.pipeline import cpu_threads

    if args.command == "decode":
        from tokenization_prep.decode import decode_file
        from tokenization_prep.tokenizer_io import load_tokenizer

        tok = load_tokenizer(args.pretrained_tokenizer or str(Path(args.file).resolve().parent / "tokenizer"))
        for block in decode_file(Path(args.file), tok, args.index, args.explain):
            print(block)
        return 0
    if args.command == "verify":
        from tokenization_prep.metadata import check_verify

        check_verify(Path(args.output_path), args.max_seq_length)
        print(
            f"{args.output_path}: metadata.yaml is gdp's DatasetMetadata; every file matches "
            "sha256/files_metadata.json and manifest.sha256; HDF5 shapes match"
        )
        return 0
    cpu_threads(args.num_workers)
    cfg = settings(args)
    if args.command == "data_prep":
        from tokenization_prep.packing import PackingConfig
        from tokenization_prep.pipeline import check_log_path, read_categories
        from tokenization_prep.prep import data_prep_file
        from tokenization_prep.tokenizer_io import tokenizer_for_data

        src, out = Path(args.input_path), Path(args.output_path)
        if not src.is_file():
            raise DataError(f"--input_path {src}: no such file")
        if out.suffix != ".hdf5":
            raise DataError(f"--output_path {out}: data_prep writes one HDF5 file; give a path ending in .hdf5")
        if out.exists() and not args.overwrite_output_path:
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
            PackingConfig.parse(cfg.input_packing_config),
            article,
            cfg.ignore_input_format_error,
            categories,
        )
        summary = f"wrote {m.sequences:,} sequences ({m.articles:,} articles from {m.lines:,} lines) to {out}"
        if log_path:
            from common.files import atomic_write

            with atomic_write(log_path, "w") as fh:
                fh.write("".join(f"{k}: {v}\n" for k, v in vars(args).items()) + summary + "\n")
        if not args.silent:
            print(summary)
        return 0
    from tokenization_prep.pipeline import run_pipeline

    result = run_pipeline(cfg, log=lambda line: print(line, file=sys.stderr))
    print("\n".join(result["report"]))
    c = result["counts"]
    print(
        f"output: {result['output']} ({c.train} train, {c.dev} dev, {c.test} test files; metadata.yaml, "
        "sha256/files_metadata.json, data_report.md, PNG histograms, logs.log, manifest.sha256)"
    )
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
    sys.exit(guard(main))

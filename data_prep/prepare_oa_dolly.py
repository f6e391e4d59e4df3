"""Dolly-15k + OASST1 -> ``data_prep/oasst1_dolly.jsonl`` (BLOOMChat's stage 2 data).

Usage (hub ids are the defaults; local files or directories work the same):
    python data_prep/prepare_oa_dolly.py
    python data_prep/prepare_oa_dolly.py --dolly data/samples/dolly/databricks-dolly-15k.jsonl \\
        --oasst data/samples/oasst1/oasst1_validation_en.jsonl --format bloomchat
"""

import sys

from common.cli import guard
from data_prep.cli import base_parser, run_main
from data_prep.dolly import DOLLY_HUB_ID
from data_prep.oasst import MODES, OASST_HUB_ID, OasstFilters
from data_prep.pipeline import prepare_oa_dolly


def make_parser():
    parser = base_parser(__doc__.splitlines()[0], "data_prep/oasst1_dolly.jsonl")
    parser.add_argument("--dolly", default=DOLLY_HUB_ID, help="hub id, file or directory ('' to skip)")
    parser.add_argument("--oasst", default=OASST_HUB_ID, help="hub id, file or directory ('' to skip)")
    parser.add_argument("--oasst-split", default="train", help="hub split to read (BLOOMChat: train)")
    parser.add_argument(
        "--oasst-mode",
        choices=MODES,
        default="best",
        help="best: highest net emoji score per level (BLOOMChat); rank: best rank; "
        "all-leaves: every root-to-leaf path",
    )
    parser.add_argument("--oasst-lang", default="", help="comma-separated languages to keep (default: all)")
    parser.add_argument("--oasst-drop-deleted", action="store_true", help="drop deleted messages")
    parser.add_argument("--oasst-require-review", action="store_true", help="keep only review_result=true")
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    filters = OasstFilters(
        tuple(x for x in args.oasst_lang.split(",") if x), args.oasst_drop_deleted, args.oasst_require_review
    )
    return run_main(
        lambda: prepare_oa_dolly(
            args.output,
            args.dolly or None,
            args.oasst or None,
            fmt=args.format,
            strict=args.strict,
            dedup=args.dedup,
            oasst_mode=args.oasst_mode,
            oasst_filters=filters,
            oasst_split=args.oasst_split,
        ),
        args,
    )


if __name__ == "__main__":
    sys.exit(guard(main))

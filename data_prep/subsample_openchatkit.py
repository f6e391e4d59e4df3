"""LAION OIG -> ``data_prep/bloom_ock_100K_each.jsonl`` (BLOOMChat's stage 1 data).

Usage (the hub id is the default; a directory of OIG files or one file works the same):
    python data_prep/subsample_openchatkit.py
    python data_prep/subsample_openchatkit.py --oig data/samples/oig --sample-size 1000 --seed 7
"""

import sys

from common.cli import guard
from data_prep.cli import base_parser, run_main
from data_prep.oig import BLOOMCHAT_OIG_FILES, DEFAULT_SAMPLE, OIG_HUB_ID
from data_prep.pipeline import subsample_openchatkit


def make_parser():
    parser = base_parser(__doc__.splitlines()[0], "data_prep/bloom_ock_100K_each.jsonl")
    parser.add_argument("--oig", default=OIG_HUB_ID, help="hub id, directory of OIG files, or one file")
    parser.add_argument(
        "--sample-size",
        type=int,
        default=DEFAULT_SAMPLE,
        help="lines sampled per file (seeded reservoir sample, not the head)",
    )
    parser.add_argument(
        "--upweight-basic", action="store_true", help="BLOOMChat's x1001 repetition of unified_basic.jsonl lines"
    )
    parser.add_argument("--keep-prosocial", action="store_true", help="keep lines whose source is 'prosocial'")
    parser.add_argument(
        "--files",
        default=",".join(BLOOMCHAT_OIG_FILES),
        help="comma-separated OIG file names to read from a directory or the hub",
    )
    return parser


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    if args.sample_size < 1:
        print("error: --sample-size must be at least 1", file=sys.stderr)
        return 2
    files = tuple(x for x in args.files.split(",") if x)
    return run_main(
        lambda: subsample_openchatkit(
            args.output,
            args.oig,
            fmt=args.format,
            seed=args.seed,
            sample_size=args.sample_size,
            strict=args.strict,
            dedup=args.dedup,
            upweight_basic=args.upweight_basic,
            drop_prosocial=not args.keep_prosocial,
            files=files,
        ),
        args,
    )


if __name__ == "__main__":
    sys.exit(guard(main))

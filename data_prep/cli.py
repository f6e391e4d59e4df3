"""Command-line plumbing of the data_prep commands: their common flags and the output rule."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from common.errors import DataError
from data_prep.writer import FORMATS


def base_parser(description: str, default_output: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default=default_output, help="output JSONL path")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output (refused otherwise)")
    parser.add_argument("--seed", type=int, default=42, help="seed for sampling and shuffling")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="pairs",
        help="pairs: gdp list of prompt/completion pairs (trains on bot replies only); "
        "bloomchat: BLOOMChat's exact {'prompt': '', 'completion': text} records",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad record (or missing OIG file) instead of quarantining it",
    )
    parser.add_argument(
        "--dedup", action="store_true", help="drop exact duplicates (normalized text hash) within and across sources"
    )
    return parser


def run_main(job: Callable[[], object], args: argparse.Namespace | None = None) -> int:
    """Run a job and print its summary. An existing ``--output`` is refused unless ``--overwrite`` (the project's
    rule for every stage's outputs); errors are ``common.cli.guard``'s to print."""
    if args is not None and Path(args.output).exists() and not args.overwrite:
        raise DataError(f"--output {args.output} exists; pass --overwrite to replace it")
    for line in job().summary_lines():
        print(line)
    return 0

"""Shared command-line plumbing for the data_prep scripts: common flags and error handling."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from data_prep.readers import DataError
from data_prep.writer import FORMATS


def base_parser(description: str, default_output: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--output", default=default_output, help="output JSONL path")
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


def run_main(job: Callable[[], object]) -> int:
    """Run a job; print its summary, or one clear error line (exit 2) instead of a traceback."""
    try:
        result = job()
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no output written", file=sys.stderr)
        return 130
    for line in result.summary_lines():
        print(line)
    return 0

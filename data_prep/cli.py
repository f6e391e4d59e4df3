"""Shared command-line plumbing for the data_prep scripts: common flags and error handling."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from data_prep.readers import DataError
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
    """Run a job; print its summary, or one clear error line (exit 2) instead of a traceback. An existing
    ``--output`` is refused unless ``--overwrite`` (the project's rule for every stage's outputs)."""
    try:
        if args is not None and Path(args.output).exists() and not args.overwrite:
            raise DataError(f"--output {args.output} exists; pass --overwrite to replace it")
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


def dispatch(stage: str, commands: dict[str, tuple[str, str]], argv: list[str] | None = None) -> int:
    """``python -m STAGE COMMAND [flags]``: run COMMAND's module ``main(flags)``; ``commands``: name -> (module,
    one-line help). The one way every stage is run; each command's module also runs on its own."""
    import importlib

    argv = sys.argv[1:] if argv is None else list(argv)
    # the deepspeed launcher puts --local_rank=N before the command: hand it to the command instead
    launcher = [a for a in argv[:2] if a.startswith("--local_rank")]
    if launcher and "=" not in launcher[0] and len(argv) > 1:
        launcher.append(argv[1])
    argv = argv[len(launcher) :] + launcher if launcher and len(argv) > len(launcher) else argv
    if not argv or argv[0] not in commands:
        width = max(map(len, commands))
        lines = [f"usage: python -m {stage} COMMAND [flags]   (COMMAND --help for its flags)", "commands:"]
        lines += [f"  {name:<{width}}  {why}" for name, (_, why) in commands.items()]
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown command {argv[0]!r}; choose one of {', '.join(commands)}", file=sys.stderr)
            return 2
        print("\n".join(lines), file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    return importlib.import_module(commands[argv[0]][0]).main(argv[1:])

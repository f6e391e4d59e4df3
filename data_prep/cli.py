"""Command-line plumbing shared by the data_prep commands: a parser generated from a command's settings model (with
``--config FILE.yaml``), and the output rule (an existing output is replaced only with ``--overwrite_output_path``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence, TypeVar

from common.errors import DataError
from common.settings import command_parser, parse_settings
from data_prep.jobs import RunResult
from data_prep.settings import JobSettings

S = TypeVar("S", bound=JobSettings)


def parse_command(command: str, doc: str, model: type[S], argv: Sequence[str] | None) -> S:
    """``model`` from ``argv`` (a YAML ``--config`` first, then the flags given); ``doc``'s first line is the help."""
    return parse_settings(command_parser(f"python -m data_prep {command}", doc, model, config=True), model, argv)


def run_job(job: Callable[[S], RunResult], settings: S) -> int:
    """Run a job and print its summary. An existing output is refused unless ``--overwrite_output_path`` (the
    project's rule for every stage's outputs); errors are ``common.cli.guard``'s to print."""
    if Path(settings.output_path).exists() and not settings.overwrite_output_path:
        raise DataError(f"--output_path {settings.output_path} exists; pass --overwrite_output_path to replace it")
    for line in job(settings).summary_lines():
        print(line)
    return 0

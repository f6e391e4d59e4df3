"""Fixtures for tokenization_prep tests: real data_prep output, one shared tokenized output, and the CLI as a user
runs it (in this process, through the same dispatcher and error guard as ``python -m tokenization_prep``)."""

import contextlib
import io
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

import pytest

from common.cli import dispatch
from tests.conftest import PYTHIA_TOKENIZER, ROOT, chat_jsonl_file
from tokenization_prep.__main__ import COMMANDS


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run(*args) -> Result:
    """``python -m tokenization_prep ARGS`` in this process (no interpreter start-up): exit status and output."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = dispatch("tokenization_prep", COMMANDS, [str(a) for a in args])
        except SystemExit as exc:  # argparse: a bad flag (2) or --help (0)
            rc = exc.code
    return Result(rc, out.getvalue(), err.getvalue())


def cli(*args, env=None) -> subprocess.CompletedProcess:
    """``python -m tokenization_prep ARGS`` in a fresh interpreter, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "tokenization_prep", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def pipe_args(src, out, *extra):
    return [
        "pipeline",
        "--input_path",
        str(src),
        "--output_path",
        str(out),
        "--pretrained_tokenizer",
        str(PYTHIA_TOKENIZER),
        "--max_seq_length",
        "512",
        "--input_packing_config",
        "greedy::drop",
        "--shuffle",
        "on_RAM",
        "--num_training_splits",
        "3",
        "--num_dev_splits",
        "1",
        "--num_test_splits",
        "0",
        *extra,
    ]


@pytest.fixture(scope="session")
def chat_jsonl(tmp_path_factory):
    """Real data_prep output: the 100 OASST trees plus the first 1,500 Dolly records."""
    return chat_jsonl_file(tmp_path_factory.mktemp("prep"), dolly_lines=1500)


@pytest.fixture(scope="session")
def tokenized(tmp_path_factory, chat_jsonl):
    """``pipe_args``' output of ``chat_jsonl`` (greedy::drop at 512, 3 train + 1 dev files), made once: read it,
    or copy it (``tokenized_copy``) to change it."""
    out = tmp_path_factory.mktemp("tokenized") / "out"
    r = run(*pipe_args(chat_jsonl, out))
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture
def tokenized_copy(tokenized, tmp_path):
    """A copy of ``tokenized`` (file times kept) that a test may alter."""
    copy = tmp_path / "copy"
    shutil.copytree(tokenized, copy)
    return copy

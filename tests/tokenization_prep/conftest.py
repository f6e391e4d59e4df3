"""Fixtures for tokenization_prep tests: real data_prep output, and the CLI as a user runs it."""

import os
import subprocess
import sys

import pytest

from tests.conftest import PYTHIA_TOKENIZER, ROOT, chat_jsonl_file


@pytest.fixture(scope="module")
def chat_jsonl(tmp_path_factory):
    """Real data_prep output: the 100 OASST trees plus the first 1,500 Dolly records."""
    return chat_jsonl_file(tmp_path_factory.mktemp("prep"), dolly_lines=1500)


def cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tokenization_prep", *args],
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

"""Fixtures for tokenization_prep tests: real data_prep output, and the CLI as a user runs it."""

import gzip
import os
import subprocess
import sys

import pytest

from data_prep.pipeline import prepare_oa_dolly
from tests.conftest import DOLLY, OASST_TREES, PYTHIA_TOKENIZER, ROOT


@pytest.fixture(scope="module")
def chat_jsonl(tmp_path_factory):
    """Real data_prep output: the 100 OASST trees plus the first 1,500 Dolly records."""
    d = tmp_path_factory.mktemp("prep")
    dolly = d / "dolly_head.jsonl"
    with gzip.open(DOLLY, "rb") as fh:
        dolly.write_bytes(b"".join(next(fh) for _ in range(1500)))
    out = d / "chat.jsonl"
    prepare_oa_dolly(out, str(dolly), str(OASST_TREES))
    return out


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

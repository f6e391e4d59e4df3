"""Shared test fixtures: paths to the bundled real data (no network, no ../shared needed)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
DOLLY = DATA / "samples" / "dolly" / "databricks-dolly-15k.jsonl.gz"
OASST_ROWS = DATA / "samples" / "oasst1" / "oasst1_validation_en.jsonl"
OASST_TREES = DATA / "samples" / "oasst1" / "oa_en_100_trees.jsonl"
OIG_DIR = DATA / "samples" / "oig"
OIG_JOKES = OIG_DIR / "unified_joke_explanations.jsonl"
PYTHIA_TOKENIZER = DATA / "tokenizers" / "gpt-neox-20b"
GPT2_TOKENIZER = DATA / "tokenizers" / "gpt2"
GDP_GOLDEN = DATA / "gdp_golden"


@pytest.fixture
def root() -> Path:
    return ROOT

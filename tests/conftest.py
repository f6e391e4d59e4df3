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


def chat_jsonl_file(directory: Path, dolly_lines: int = 0, oasst: bool = True) -> Path:
    """Real data_prep output in ``directory``: the first ``dolly_lines`` Dolly records and the 100 OASST trees."""
    import gzip

    from data_prep.jobs import prepare_oa_dolly

    dolly = None
    if dolly_lines:
        dolly = directory / "dolly_head.jsonl"
        with gzip.open(DOLLY, "rb") as fh:
            dolly.write_bytes(b"".join(next(fh) for _ in range(dolly_lines)))
    out = directory / "chat.jsonl"
    # every one of the 100 trees (their 5 synthetic messages too, as BLOOMChat): the fixtures' data stays put
    prepare_oa_dolly(out, str(dolly) if dolly else None, str(OASST_TREES) if oasst else None, oasst_keep_flagged=True)
    return out


def tokenize(src: Path, out: Path, seq: int, packing: str, tokenizer: Path = PYTHIA_TOKENIZER, **settings) -> dict:
    """tokenization_prep's pipeline on ``src`` (shuffle on_RAM, 2 train + 1 dev file unless ``settings`` say)."""
    from tokenization_prep.pipeline import run_pipeline
    from tokenization_prep.settings import PipelineConfig

    splits = {"num_training_splits": 2, "num_dev_splits": 1, "num_test_splits": 0, "shuffle": "on_RAM"}
    cfg = PipelineConfig(
        input_path=str(src),
        output_path=str(out),
        pretrained_tokenizer=str(tokenizer),
        max_seq_length=seq,
        input_packing_config=packing,
        **{**splits, **settings},
    )
    return run_pipeline(cfg)

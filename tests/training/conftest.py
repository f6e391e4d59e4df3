"""Fixtures for training tests: real data_prep output tokenized by tokenization_prep at a short length."""

import os

import pytest
import yaml

from data_prep.pipeline import prepare_oa_dolly, subsample_openchatkit
from tests.conftest import OASST_TREES, OIG_JOKES, PYTHIA_TOKENIZER
from tokenization_prep.pipeline import PipelineConfig, run_pipeline

SEQ = 128


@pytest.fixture(scope="session")
def token_dirs(tmp_path_factory):
    """(stage-1 OIG dir, stage-2 OASST dir) of packed HDF5 with a dev split, Pythia tokenizer, length 128."""
    base = tmp_path_factory.mktemp("tok")
    oig, oa = base / "oig.jsonl", base / "oa.jsonl"
    subsample_openchatkit(oig, str(OIG_JOKES), sample_size=200)
    prepare_oa_dolly(oa, None, str(OASST_TREES))
    dirs = []
    for src in (oig, oa):
        out = base / (src.stem + "_out")
        run_pipeline(PipelineConfig(str(src), str(out), str(PYTHIA_TOKENIZER), SEQ, "greedy::truncate_left",
                                    shuffle="on_RAM", num_training_splits=2, dev_ratio=0.1))
        dirs.append(out)
    return dirs


@pytest.fixture
def stage_config(tmp_path):
    """Write a tiny stage YAML; returns a function(name, data_dir, **overrides) -> path."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    def make(name, data_dir, **over):
        cfg = {"name": name, "data_dir": str(data_dir), "output_dir": str(tmp_path / "ckpt" / name),
               "model": {"kind": "pythia", "tiny": {"hidden_size": 32, "num_layers": 2, "num_heads": 4}},
               "deepspeed": "training/configs/ds/cpu.json", "epochs": 1, "max_steps": 6, "micro_batch_size": 2,
               "gradient_accumulation_steps": 2, "lr": 1e-3, "save_every": 3, "eval_every": 3, "seed": 3}
        cfg.update(over)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make

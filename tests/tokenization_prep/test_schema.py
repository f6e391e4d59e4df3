"""The tokenized-dir contract (tokenization_prep.schema): what training refuses, in one line, before it starts."""

import os
import shutil
import subprocess
import sys

import h5py
import pytest
import yaml

from common.errors import DataError
from tests.conftest import GPT2_TOKENIZER, PYTHIA_TOKENIZER, ROOT, chat_jsonl_file, tokenize
from tokenization_prep.schema import dir_tokenizer_sha256, load_tokenized_dir


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("schema")
    out = d / "tok"
    tokenize(chat_jsonl_file(d), out, 256, "greedy::drop")
    return out


def _alter(d):
    with h5py.File(d / "train_1_of_2.hdf5", "r+") as f:  # same size, new bytes
        f["input_ids"][0, 0] = f["input_ids"][0, 0] + 1


def _drop_field(d):
    meta = yaml.safe_load((d / "metadata.yaml").read_text())
    del meta["number_of_training_files"]
    (d / "metadata.yaml").write_text(yaml.safe_dump(meta))


CASES = {
    "altered HDF5": (_alter, "train_1_of_2.hdf5: sha256 differs"),
    "missing HDF5": (lambda d: (d / "train_2_of_2.hdf5").unlink(), "train_2_of_2.hdf5: missing"),
    "truncated HDF5": (lambda d: (d / "dev_1_of_1.hdf5").write_bytes(b"x"), "dev_1_of_1.hdf5: 1 bytes"),
    "no manifest": (lambda d: (d / "manifest.sha256").unlink(), "unfinished (no manifest.sha256"),
    "metadata not a mapping": (lambda d: (d / "metadata.yaml").write_text("- 1\n"), "must be a YAML mapping"),
    "metadata lacks a field": (_drop_field, "number_of_training_files: Field required"),
    "a file of another output": (
        lambda d: shutil.copy(d / "train_1_of_2.hdf5", d / "train_3_of_3.hdf5"),
        "train_3_of_3.hdf5: metadata.yaml says 2 train files",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_dirs_are_refused_in_one_line(tok_dir, tmp_path, case):
    d = tmp_path / "copy"
    shutil.copytree(tok_dir, d)  # copy2: times kept, so an untouched file is checked by size alone
    load_tokenized_dir(d)
    change, needle = CASES[case]
    change(d)
    with pytest.raises(DataError) as err:
        load_tokenized_dir(d)
    assert needle in str(err.value) and "re-run tokenization_prep" in str(err.value) and "\n" not in str(err.value)


def test_a_good_dir_loads_with_its_counts_and_tokenizer(tok_dir, tmp_path):
    d = load_tokenized_dir(tok_dir, full=True)
    assert [p.name for p in d.splits["train"]] == ["train_1_of_2.hdf5", "train_2_of_2.hdf5"]
    assert d.tokenizer_sha256 == dir_tokenizer_sha256(tok_dir / "tokenizer") == dir_tokenizer_sha256(PYTHIA_TOKENIZER)
    assert d.tokenizer_sha256 != dir_tokenizer_sha256(GPT2_TOKENIZER)
    copy = tmp_path / "plain_copy"
    shutil.copytree(tok_dir, copy, copy_function=shutil.copyfile)  # new times: every file re-hashed, still good
    assert load_tokenized_dir(copy).meta.max_seq_length == 256


def test_training_refuses_before_deepspeed(tok_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tok_dir, d)
    (d / "train_2_of_2.hdf5").unlink()
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "name": "s",
                "data_dir": str(d),
                "output_dir": str(tmp_path / "ckpt"),
                "model": {"kind": "pythia", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 4}},
            }
        )
    )
    r = subprocess.run(
        [sys.executable, "-m", "training.run", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert r.returncode == 2 and "train_2_of_2.hdf5: missing" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "deepspeed" not in r.stderr.lower()

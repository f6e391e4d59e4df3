"""The tokenized-dir contract (tokenization_prep.schema): the one verifier, what training and ``verify`` refuse, in
one line, before anything starts."""

import os
import shutil
import subprocess
import sys

import h5py
import pytest
import yaml

from common.errors import ConfigError, DataError
from tests.conftest import GPT2_TOKENIZER, PYTHIA_TOKENIZER, ROOT, chat_jsonl_file, tokenize
from tests.tokenization_prep.conftest import run
from tokenization_prep.schema import TokenizedDirError, dir_tokenizer_sha256, load_tokenized_dir


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


def test_verify_command_passes_a_good_dir(tok_dir):
    r = run("verify", tok_dir, "--max_seq_length", "256")
    assert r.returncode == 0 and "HDF5 shapes match" in r.stdout, r.stderr


def test_verify_refuses_another_max_seq_length(tok_dir):
    r = run("verify", tok_dir, "--max_seq_length", "1024")
    assert r.returncode == 2 and "max_seq_length is 256, expected 1024" in r.stderr and r.stderr.count("\n") == 1


def test_every_problem_is_listed(tok_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tok_dir, d)
    (d / "train_2_of_2.hdf5").write_bytes(b"corrupt")
    (d / "extra.bin").write_bytes(b"x")
    with pytest.raises(TokenizedDirError) as err:
        load_tokenized_dir(d, full=True)
    problems = err.value.problems
    assert any(p.startswith("train_2_of_2.hdf5: 7 bytes, ") for p in problems), problems
    assert "extra.bin: not listed in sha256/files_metadata.json" in problems
    assert any(p.startswith("train_2_of_2.hdf5: not a readable HDF5 split") for p in problems), problems
    assert f"(and {len(problems) - 1} more)" in str(err.value)


def test_a_changed_file_of_the_same_size_is_found_by_full(tok_dir, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(tok_dir, d)
    report = d / "data_report.md"
    text = report.read_bytes()
    stat = report.stat()
    report.write_bytes(text[:-1] + (b"x" if text[-1:] != b"x" else b"y"))
    os.utime(report, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # time kept: only a full check re-hashes it
    load_tokenized_dir(d)
    with pytest.raises(DataError, match="data_report.md: sha256 differs"):
        load_tokenized_dir(d, full=True)


def test_a_good_dir_loads_with_its_counts_and_tokenizer(tok_dir, tmp_path):
    d = load_tokenized_dir(tok_dir, full=True)
    assert [p.name for p in d.splits["train"]] == ["train_1_of_2.hdf5", "train_2_of_2.hdf5"]
    assert d.tokenizer_sha256 == dir_tokenizer_sha256(tok_dir / "tokenizer") == dir_tokenizer_sha256(PYTHIA_TOKENIZER)
    assert d.tokenizer_sha256 != dir_tokenizer_sha256(GPT2_TOKENIZER)
    copy = tmp_path / "plain_copy"
    shutil.copytree(tok_dir, copy, copy_function=shutil.copyfile)  # new times: every file re-hashed, still good
    assert load_tokenized_dir(copy).meta.max_seq_length == 256


def test_training_loads_data_through_the_verifier(tok_dir, tmp_path):
    from training.data import load_data

    d = tmp_path / "copy"
    shutil.copytree(tok_dir, d)
    assert load_data(d).meta.max_seq_length == 256
    (d / "train_2_of_2.hdf5").unlink()
    with pytest.raises(ConfigError, match="data_dir .*train_2_of_2.hdf5: missing"):
        load_data(d)


@pytest.mark.slow  # a training process start-up (torch, deepspeed's absence)
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
                "output_path": str(tmp_path / "ckpt"),
                "model": {"kind": "pythia", "tiny": {"hidden_size": 32, "num_layers": 1, "num_heads": 4}},
            }
        )
    )
    r = subprocess.run(
        [sys.executable, "-m", "training", "run", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "DS_ACCELERATOR": "cpu"},
    )
    assert r.returncode == 2 and "train_2_of_2.hdf5: missing" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert "deepspeed" not in r.stderr.lower()

"""gdp's one-file ``data_prep`` command: text lines, and an existing output kept."""

import h5py
import pytest

from tests.conftest import PYTHIA_TOKENIZER
from tests.tokenization_prep.conftest import run


@pytest.fixture
def text_file(tmp_path):
    src = tmp_path / "plain.txt"
    src.write_text("The first line of plain text.\nA second, longer line of plain text here.\n")
    return src


def data_prep(src, out, *extra):
    return run(
        "data_prep", "--input_path", src, "--output_path", out, "--pretrained_tokenizer", PYTHIA_TOKENIZER, *extra
    )


def test_text_lines_are_all_completion(tmp_path, text_file):
    out = tmp_path / "plain.hdf5"
    r = data_prep(text_file, out, "--max_seq_length", "16", "--input_packing_config", "single::truncate_right")
    assert r.returncode == 0, r.stderr
    with h5py.File(out) as f:
        t = f["token_type_ids"][:]
    assert t.shape == (2, 16) and (t[:, 0] == 1).all() and (t == 3).sum() == 2  # all completion, one SEP each


def test_an_existing_output_needs_overwrite(tmp_path, text_file):
    out = tmp_path / "plain.hdf5"
    out.write_bytes(b"old")
    r = data_prep(text_file, out)
    assert r.returncode == 2 and "pass --overwrite_output_path" in r.stderr and out.read_bytes() == b"old"
    assert data_prep(text_file, out, "--overwrite_output_path", "--silent").returncode == 0
    assert out.read_bytes() != b"old"


def test_pipeline_only_settings_are_not_flags(tmp_path, text_file):
    r = data_prep(text_file, tmp_path / "x.hdf5", "--num_training_splits", "2")
    assert r.returncode == 2 and "unrecognized arguments: --num_training_splits" in r.stderr

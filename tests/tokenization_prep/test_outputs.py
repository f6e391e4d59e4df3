"""What one pipeline run on real data_prep output writes: HDF5 files, gdp's metadata, the report, the tokenizer."""

import json
import re

import h5py
import numpy as np
import yaml

from tests.conftest import PYTHIA_TOKENIZER
from tests.tokenization_prep.conftest import run
from tokenization_prep.tokenizer_io import load_tokenizer


def train_files(out):
    return [out / f"train_{i}_of_3.hdf5" for i in range(1, 4)]


def test_hdf5_files_hold_int32_rows_of_max_seq_length(tokenized):
    for path in [*train_files(tokenized), tokenized / "dev_1_of_1.hdf5"]:
        with h5py.File(path) as f:
            assert f["input_ids"].dtype == np.int32 and f["token_type_ids"].dtype == np.int32
            assert f["input_ids"].shape[1] == 512 and f["input_ids"].shape == f["token_type_ids"].shape


def test_token_types_and_padding(tokenized):
    for path in train_files(tokenized):
        with h5py.File(path) as f:
            t, ids = f["token_type_ids"][:], f["input_ids"][:]
        assert set(np.unique(t)) <= {0, 1, 2, 3} and (t == 1).any()
        assert (ids[t == 2] == 0).all()  # no pad token in this tokenizer: eos pads, as gdp


def test_train_files_are_balanced(tokenized):
    sizes = []
    for path in train_files(tokenized):
        with h5py.File(path) as f:
            sizes.append(len(f["input_ids"]))
    assert max(sizes) - min(sizes) <= 1
    meta = yaml.safe_load((tokenized / "metadata.yaml").read_text())
    assert meta["max_batch_size_train"] == min(sizes) and meta["train_sequences"] == sum(sizes)


def test_metadata_has_gdps_meanings(tokenized, chat_jsonl):
    meta = yaml.safe_load((tokenized / "metadata.yaml").read_text())
    # gdp's meanings: vocab_size is tokenizer.vocab_size (added tokens left out); len(tokenizer) is ours
    assert meta["max_seq_length"] == 512 and meta["vocab_size"] == 50254 and meta["token_type_ids"] is True
    assert meta["total_vocab_size"] == 50277 and meta["pad_token_id"] == 0
    assert meta["number_of_training_files"] == 3 and meta["number_of_dev_files"] == 1
    assert meta["train_articles"] + meta["dev_articles"] == len(chat_jsonl.read_text().splitlines())
    assert meta["input_packing_config"] == "greedy::drop" and meta["mix"] is None and meta["shuffle"] == "on_RAM"


def test_report_and_histograms_are_written(tokenized):
    for name in ("data_report.md", "data_report.json", "article_lengths.png", "sequence_fill.png"):
        assert (tokenized / name).stat().st_size > 0
    assert "| padding % |" in (tokenized / "data_report.md").read_text()
    by_source = json.loads((tokenized / "data_report.json").read_text())["splits"]["train"]["tokens_by_source"]
    assert by_source["dolly"]["completion"] > 0 and by_source["oasst"]["completion"] > 0


def test_the_tokenizer_is_saved_with_the_chat_template(tokenized):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenized / "tokenizer"))
    assert tok.chat_template and tok.eos_token_id == 0


def test_logs_record_every_setting_as_given(tokenized):
    log = (tokenized / "logs.log").read_text().splitlines()
    assert "input_packing_config: greedy::drop" in log and "mix: None" in log and "prompt_keyword: prompt" in log
    assert not any(line.startswith("num_workers") for line in log)  # no effect on the output: not logged


def test_decode_marks_types(tokenized):
    r = run("decode", tokenized / "train_1_of_3.hdf5", "--index", "0")
    assert r.returncode == 0, r.stderr
    assert "[PROMPT]<human>:" in r.stdout and "[COMPLETION]" in r.stdout and "<|SEP|>" in r.stdout
    with h5py.File(tokenized / "train_1_of_3.hdf5") as f:
        ids, types = f["input_ids"][0], f["token_type_ids"][0]
    tok = load_tokenizer(str(PYTHIA_TOKENIZER))
    body = r.stdout.split("\n", 1)[1].rstrip("\n")
    pads = int((types == 2).sum())
    assert body.endswith(f"[PADDING x{pads}]") if pads else "[PADDING" not in body
    runs = [int(t) for k, t in enumerate(types) if k == 0 or t != types[k - 1]]
    assert body.count("[PROMPT]") == runs.count(0) and body.count("[COMPLETION]") == runs.count(1)
    text = re.sub(r"\[/?(PROMPT|COMPLETION)\]|\[PADDING x\d+\]", "", body).replace("<|SEP|>", tok.eos_token)
    assert text == tok.decode(ids[types != 2].tolist())  # every token, in order, nothing else


def test_decode_index_out_of_range_is_one_line(tokenized):
    r = run("decode", tokenized / "dev_1_of_1.hdf5", "--index", "100000")
    assert r.returncode == 2 and "out of range" in r.stderr and r.stderr.count("\n") == 1, r.stderr

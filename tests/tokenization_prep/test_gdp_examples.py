"""generative_data_prep's own examples (tests/tokenization_prep/gdp_examples) rerun through our CLI with the
flags gdp's tests used: every HDF5 dataset element for element, every split/test line file byte for byte."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from common.chat_format import CHAT_TEMPLATE
from tests.conftest import GPT2_TOKENIZER, PYTHIA_TOKENIZER
from tests.tokenization_prep.conftest import Result
from tests.tokenization_prep.conftest import run as run_command
from tokenization_prep.tokenizer_io import load_tokenizer

EX = Path(__file__).parent / "gdp_examples"
# gdp's tests/test_e2e.py::test_pipeline: gpt2, 1024, keep prompt-only, keep split jsonls, no shuffle
PIPELINE = {
    # gdp's example repeats lines, so every dev line nearly copies a train line: off gives gdp's bytes
    "pipeline_test": "--dev_ratio 0.2 --test_ratio 0.1 --do_not_balance_hdf5 --input_packing_config full "
    "--dev_leakage off",
    "pretraining_txt": "--num_training_splits 32 --num_dev_splits 0 --num_test_splits 0 --input_packing_config full",
    "dialogue": "--num_training_splits 32 --num_dev_splits 0 --num_test_splits 0 "
    "--input_packing_config single::truncate_right",
    "generative_tuning": "--num_training_splits 32 --num_dev_splits 0 --num_test_splits 0 "
    "--input_packing_config single::drop",
    "no_split_dir": "--num_training_splits 32 --num_dev_splits 0 --num_test_splits 0 "
    "--input_packing_config single::drop",
    "json_load_error_test": "--num_training_splits 32 --num_dev_splits 0 --num_test_splits 0 "
    "--input_packing_config full --ignore_input_format_error",
    "category_ids": "--num_training_splits 32 --num_dev_splits 0 --num_test_splits 0 --max_seq_length 2048 "
    "--input_packing_config greedy::drop --packing_boundary prompt_completion_pair",
}


def run(*args: str) -> Result:
    """The command in this process (as ``python -m tokenization_prep``), which must succeed."""
    r = run_command(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def same_hdf5(got: Path, want: Path) -> None:
    with h5py.File(got) as g, h5py.File(want) as w:
        assert set(w) <= set(g), (got.name, sorted(g), sorted(w))
        for key in w:
            assert g[key].shape == w[key].shape, (got.name, key, g[key].shape, w[key].shape)
            assert np.array_equal(g[key][:], w[key][:]), (got.name, key)


SLOW = {"dialogue", "generative_tuning", "no_split_dir"}  # packings test_gdp_golden also checks, on data_prep


@pytest.mark.parametrize(
    "case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(PIPELINE)]
)
def test_pipeline_files_equal_gdps(tmp_path, case):
    src = next((EX / case).glob(f"example_{case}_data.*"))
    gold, out = EX / case / f"pipelined_{case}", tmp_path / "out"
    extra = []
    if case == "category_ids":
        cats = tmp_path / "categories.json"
        cats.write_text(json.dumps(list(json.loads((gold / "category_to_id.json").read_text()))))
        extra = ["--categories_path", str(cats)]
    args = (
        f"pipeline --input_path {src} --output_path {out} --pretrained_tokenizer {GPT2_TOKENIZER} "
        f"--max_seq_length 1024 --keep_prompt_only_sequences --keep_split_jsonls --shuffle False "
        f"{PIPELINE[case]}"
    ).split()
    run(*args, *extra)
    want = sorted(p.name for p in gold.glob("*.hdf5"))
    assert sorted(p.name for p in out.glob("*.hdf5")) == want and want
    for name in want:
        same_hdf5(out / name, gold / name)
    for sub in ("splits", "test_files"):
        if (gold / sub).is_dir():
            names = sorted(p.name for p in (gold / sub).iterdir())
            assert sorted(p.name for p in (out / sub).iterdir()) == names
            for name in names:
                assert (out / sub / name).read_bytes() == (gold / sub / name).read_bytes(), name
    if (gold / "category_to_id.json").is_file():
        assert json.loads((out / "category_to_id.json").read_text()) == json.loads(
            (gold / "category_to_id.json").read_text()
        )
    assert run("verify", str(out)).stdout


def test_metadata_equals_gdps(tmp_path):
    """gdp's tests/test_metadata.py::test_metadata_end2end_output: the whole metadata.yaml, key for key."""
    case = EX / "pretraining_split_with_new_metadata_and_sha256"
    model = tmp_path / "gpt2_config"
    model.mkdir()
    from transformers import GPT2Config

    GPT2Config().save_pretrained(model)  # gdp reads the model config to name the model type
    out = tmp_path / "out"
    run(
        "pipeline",
        "--input_path",
        str(case / "example_pretraining_data.jsonl"),
        "--output_path",
        str(out),
        "--pretrained_tokenizer",
        str(GPT2_TOKENIZER),
        "--model_config",
        str(model),
        "--max_seq_length",
        "1024",
        "--num_training_splits",
        "4",
        "--shuffle",
        "False",
        "--keep_split_jsonls",
    )
    got, want = (yaml.safe_load(p.read_text()) for p in (out / "metadata.yaml", case / "metadata.yaml"))
    assert {k: got[k] for k in want} == want
    files = json.loads((out / "sha256" / "files_metadata.json").read_text())
    assert {"metadata.yaml", "train_1_of_4.hdf5", "splits_train_1_of_4.jsonl", "tokenizer_tokenizer.json"} <= set(files)
    gold_entry = next(iter(json.loads((case / "files_metadata.json").read_text()).values()))
    assert set(files["metadata.yaml"]) == set(gold_entry) == {"sha256", "size", "modified_time"}


def test_data_prep_pads_with_an_added_pad_token(tmp_path):
    out = tmp_path / "x.hdf5"
    run(
        "data_prep",
        "--input_path",
        str(EX / "dialogue" / "example_dialogue_data.jsonl"),
        "--output_path",
        str(out),
        "--pretrained_tokenizer",
        str(GPT2_TOKENIZER),
        "--max_seq_length",
        "1024",
        "--input_packing_config",
        "single::truncate_right",
        "--special_tokens_dict",
        '{"pad_token": "<pad>"}',
        "--log_file_path",
        str(tmp_path / "prep.log"),
    )
    assert (
        "wrote 1 sequences" not in (tmp_path / "prep.log").read_text()
        and "special_tokens_dict" in (tmp_path / "prep.log").read_text()
    )
    with h5py.File(out) as f:
        ids, types = f["input_ids"][:], f["token_type_ids"][:]
    assert (types == 2).any() and (ids[types == 2] == 50257).all()  # the new token, not EOS (50256)


@pytest.mark.parametrize("case,packing", [("data_prep_test", "full"), ("no_split_dir", "single::drop")])
def test_data_prep_file_equals_gdps(tmp_path, case, packing):
    out = tmp_path / "x.hdf5"
    run(
        "data_prep",
        "--input_path",
        str(EX / case / f"example_{case}_data.jsonl"),
        "--output_path",
        str(out),
        "--pretrained_tokenizer",
        str(GPT2_TOKENIZER),
        "--max_seq_length",
        "1024",
        "--keep_prompt_only_sequences",
        "--input_packing_config",
        packing,
        "--silent",
    )
    same_hdf5(out, EX / case / f"data_prepped_{case}.hdf5")


def test_apply_chat_template_cuts_pairs_as_gdp(tmp_path):
    """gdp's rule with the BLOOMChat template: each pair is the template text up to the next first-turn prefix
    ("<human>: "), so a completion carries the template's EOS and newline, then the pair's own EOS."""
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "tokenizer.json").write_bytes((PYTHIA_TOKENIZER / "tokenizer.json").read_bytes())
    (tok_dir / "tokenizer_config.json").write_text(
        json.dumps(
            {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>", "chat_template": CHAT_TEMPLATE}
        )
    )
    src = EX / "dialogue" / "example_dialogue_data.jsonl"
    first = json.loads(src.read_text().splitlines()[0])
    out = tmp_path / "x.hdf5"
    run(
        "data_prep",
        "--input_path",
        str(src),
        "--output_path",
        str(out),
        "--pretrained_tokenizer",
        str(tok_dir),
        "--max_seq_length",
        "1024",
        "--input_packing_config",
        "single::truncate_right",
        "--apply_chat_template",
    )
    tok = load_tokenizer(str(tok_dir))
    with h5py.File(out) as f:
        ids, types = f["input_ids"][0], f["token_type_ids"][0]
    n = int((types != 2).sum())
    got = []  # (type, text) runs
    for i in range(n):
        t = 1 if types[i] == 3 else int(types[i])
        if got and got[-1][0] == t:
            got[-1][1].append(int(ids[i]))
        else:
            got.append((t, [int(ids[i])]))
    texts = [(t, tok.decode(x)) for t, x in got]
    want = []
    for i, pair in enumerate(first):
        last = i == len(first) - 1
        want += [
            (0, f"<human>: {pair['prompt']}\n<bot>: "),
            (1, pair["completion"] + "<|endoftext|>" + ("" if last else "\n<|endoftext|>")),
        ]
    assert texts == want


def test_apply_chat_template_needs_a_template(tmp_path):
    r = run_command(
        *("data_prep", "--input_path", EX / "dialogue" / "example_dialogue_data.jsonl"),
        *("--output_path", tmp_path / "y.hdf5", "--pretrained_tokenizer", GPT2_TOKENIZER, "--apply_chat_template"),
    )
    assert r.returncode == 2 and "has no chat template" in r.stderr and r.stderr.count("\n") == 1
